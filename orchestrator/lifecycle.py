"""The one owner of VM state: every move of a VM, in libvirt and in the store together.

Each verb (register, boot, pause, resume, evict, save, capture, restore, stop, revert,
destroy) makes the libvirt call and records the transition, checked against
:data:`ALLOWED`, with its reason. Every verb that brings a VM into RAM first passes
:meth:`Lifecycle.admit`: its RAM plus QEMU's overhead must fit the memory budget as
measured on the host, and the host's free memory. No other module calls
``Store.set_state`` or a libvirt verb that changes a domain
(``tests/unit/test_architecture.py`` checks it).

Reads go through :func:`live_state`, which computes a VM's state from its record and
libvirt without writing; :meth:`Lifecycle.reconcile_one` writes what it computes.

A VM whose RAM is a file is *saved in place*: QEMU writes only its device state
(``Hypervisor.save_device_state``), exits, and a new QEMU is started waiting for that
state with the RAM file mapped (~50 MiB resident); coming back is loading ~1 MiB and
``cont``. Other VMs use libvirt's managed save, which copies the RAM.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.config import Settings
from core.errors import (
    Conflict,
    HypervisorUnavailable,
    InsufficientResources,
    NotFound,
    SecurityHold,
)
from core.types import Progress
from orchestrator import eviction, ramfile
from orchestrator.budget import MIB, BudgetView, Meter, QemuMeter, projected_mib
from orchestrator.domain_xml import incoming_deferred
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import VMRecord, VMState
from orchestrator.paths import VMPaths
from orchestrator.seams import FaultHook, env_faults
from orchestrator.store import Store
from orchestrator.templates import Capture

log = logging.getLogger(__name__)
S = VMState
# Where a VM may go from each state. ERROR is reachable from anywhere (a dead QEMU, a
# vanished domain); from ERROR a VM goes wherever libvirt says it is.
ALLOWED: dict[VMState, frozenset[VMState]] = {
    S.CREATING: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    S.RUNNING: frozenset({S.PAUSED, S.SAVING, S.STOPPED, S.ERROR}),
    S.PAUSED: frozenset({S.RUNNING, S.SAVING, S.STOPPED, S.ERROR}),
    S.SAVING: frozenset({S.SAVED, S.RUNNING, S.PAUSED, S.ERROR}),
    S.SAVED: frozenset({S.RESTORING, S.RUNNING, S.STOPPED, S.ERROR}),
    S.RESTORING: frozenset({S.RUNNING, S.PAUSED, S.SAVING, S.STOPPED, S.ERROR}),
    S.STOPPED: frozenset({S.RUNNING, S.PAUSED, S.SAVED, S.ERROR}),
    S.ERROR: frozenset({S.RUNNING, S.PAUSED, S.SAVED, S.STOPPED}),
    S.DELETED: frozenset(),
}
# Deleting starts by recording the intent, so a delete killed midway is finished later.
ALLOWED = {state: targets if state is S.DELETED else targets | {S.DELETED}
           for state, targets in ALLOWED.items()}
# States a VM rests in between commands; the others are mid-operation.
SETTLED_STATES = frozenset({S.RUNNING, S.STOPPED, S.PAUSED, S.SAVED, S.ERROR})
RECONCILED = "reconcile with libvirt"
# Room on disk beside a managed save, past the guest's RAM (device state, headers).
SAVE_MARGIN_MIB = 64


@dataclass(frozen=True)
class Observed:
    """What a VM is, computed from its record and libvirt; ``why`` explains a difference."""

    state: VMState
    why: str = ""
    error: str | None = None


def live_state(record: VMRecord, domain_state: VMState | None,
               interrupted: bool = False) -> Observed:
    """The VM's state now, from its record and its domain's state (None: no domain).

    Pure: the same rules serve reads (which show it) and reconcile (which writes it).
    A save or restore in progress shows as such, unless ``interrupted`` (reconcile,
    under the home's lock: its command was killed), when the domain tells.
    """
    if domain_state is None:
        if record.state is S.ERROR:
            return Observed(S.ERROR, error=record.last_error)
        return Observed(S.ERROR, "domain gone from libvirt", "libvirt domain vanished")
    if domain_state is record.state:
        return Observed(record.state, error=record.last_error)
    if record.state in (S.SAVING, S.RESTORING) and interrupted:
        verb = "save" if record.state is S.SAVING else "restore"
        return Observed(domain_state, f"an interrupted {verb}")
    if record.state not in SETTLED_STATES:
        return Observed(record.state, error=record.last_error)
    if record.state is S.ERROR and domain_state is S.STOPPED:
        return Observed(S.ERROR, error=record.last_error)  # stands until started or deleted
    if record.state is S.RUNNING and domain_state is S.STOPPED:
        return Observed(S.ERROR, "QEMU process died", "QEMU exited while the VM was running")
    return Observed(domain_state, RECONCILED)


class Lifecycle:
    """Moves VMs between states on one host: libvirt and the store, together."""

    def __init__(self, settings: Settings, store: Store, hypervisor: Callable[[], Hypervisor],
                 meter: Meter | None = None, faults: FaultHook = env_faults) -> None:
        self.settings = settings
        self.store = store
        self._hypervisor = hypervisor
        self.meter: Meter = meter or QemuMeter(hypervisor, settings)
        self.faults = faults

    def budget(self, records: list[VMRecord] | None = None) -> BudgetView:
        """Every VM's (or ``records``') resident memory against the budget, measured now."""
        return self.meter(self.store.list_vms() if records is None else records)

    @property
    def hv(self) -> Hypervisor:
        return self._hypervisor()

    # -- recording ----------------------------------------------------------------------

    def _move(self, record: VMRecord, to: VMState, reason: str,
              error: str | None = None) -> VMRecord:
        """Record ``record`` moving to ``to``; refuses a move the table does not allow."""
        current = self.store.get_vm(record.name)
        if current.state is not to and to not in ALLOWED[current.state]:
            raise Conflict(f"VM '{record.name}' cannot go from {current.state.value} to "
                           f"{to.value} ({reason})")
        return self.store.set_state(record.name, to, reason=reason, error=error)

    def mark_ready(self, record: VMRecord, reason: str = "ready") -> VMRecord:
        return self._move(record, S.RUNNING, reason)

    def mark_error(self, record: VMRecord, reason: str, error: str) -> VMRecord:
        return self._move(record, S.ERROR, reason, error)

    def reconcile_one(self, record: VMRecord) -> str | None:
        """Write what :func:`live_state` computes; one line per change, None if none.

        Called under the home's lock: a save or restore still recorded was interrupted.
        """
        observed = live_state(record, self.domain_state(record), interrupted=True)
        if observed.state is record.state:
            return None
        self._move(record, observed.state, observed.why, observed.error)
        if observed.why == RECONCILED:
            return f"{record.name}: {record.state.value} -> {observed.state.value}"
        return f"{record.name}: {observed.why} -> {observed.state.value}"

    def domain_state(self, record: VMRecord) -> VMState | None:
        """Where the VM's domain is, in Somnus terms; None when libvirt has none."""
        try:
            return self.current(record)
        except NotFound:
            return None

    def current(self, record: VMRecord) -> VMState:
        """Where the VM's domain is: libvirt's state, and 'saved' for a VM saved in place
        whose QEMU is gone (its device state and RAM file are on disk). NotFound without
        a domain."""
        state = self.hv.state(record.domain_name)
        if state is S.STOPPED and self._paths(record).device_state.exists():
            return S.SAVED
        return state

    def _paths(self, record: VMRecord) -> VMPaths:
        return VMPaths(Path(record.vm_dir))

    # -- admission ----------------------------------------------------------------------

    def check_can_fit(self, name: str, memory_mib: int) -> None:
        """Refuse a VM that could never run here: over the budget or the host's RAM."""
        need = memory_mib + self.settings.qemu_overhead_mib
        limit = self.meter([]).limit_mib
        if need > limit:
            raise InsufficientResources(
                f"VM '{name}' needs {need} MiB ({memory_mib} RAM + "
                f"{self.settings.qemu_overhead_mib} QEMU overhead) but the memory budget is "
                f"{limit} MiB: use --memory {limit - self.settings.qemu_overhead_mib} or less "
                "(or raise SOMNUS_MEMORY_BUDGET_MIB)")
        total = psutil.virtual_memory().total // MIB
        if need > total:
            raise InsufficientResources(
                f"VM '{name}' needs {need} MiB but this host has {total} MiB of RAM")

    def check_not_held(self, record: VMRecord) -> None:
        """Refuse a VM the security policy holds (SecurityHold), naming the way out."""
        hold = self.store.get_vm(record.name).security_hold
        if hold:
            raise SecurityHold(f"VM '{record.name}' is held: {hold}; inspect it, then "
                               f"'somnus security release {record.name}'")

    def admit(self, record: VMRecord) -> None:
        """May ``record`` come into RAM now? Raises InsufficientResources if not.

        What it may still grow by (its RAM plus overhead, less what its QEMU already
        holds) must fit the budget beside every resident VM, and the host's free memory.
        A VM the security policy holds is refused (SecurityHold) until released.
        """
        self.check_not_held(record)
        self.check_can_fit(record.name, record.memory_mib)
        budget = self.budget()
        extra = max(0, projected_mib(record, self.settings)
                    - budget.resident_mib.get(record.name, 0))
        if not budget.fits(extra):
            raise InsufficientResources(
                f"VM '{record.name}' needs {extra} MiB but {budget.used_mib} of "
                f"{budget.limit_mib} MiB of the memory budget are in use ('somnus status')")
        available = psutil.virtual_memory().available // MIB
        if extra > available:
            raise InsufficientResources(
                f"VM '{record.name}' needs {extra} MiB but the host has {available} MiB free")

    # -- verbs --------------------------------------------------------------------------

    def register(self, record: VMRecord) -> VMRecord:
        """Record a new VM, state 'creating': from here a killed create is undone later."""
        return self.store.add_vm(record)

    def define(self, record: VMRecord, domain_xml: str) -> None:
        """Define the new VM's domain (not started)."""
        self.hv.define(domain_xml)

    def boot(self, record: VMRecord, reason: str) -> VMRecord:
        """Cold-boot the domain (admitted first). A new VM stays 'creating' until ready."""
        self.admit(record)
        self._fresh_ram(record)
        self.hv.start(record.domain_name)
        if record.state is S.CREATING:
            return record
        return self._move(record, S.RUNNING, reason)

    def _fresh_ram(self, record: VMRecord) -> None:
        """A cold boot starts from empty RAM, and a stopped VM has none: the old contents
        (and their blocks on disk) go, with any device state saved with them."""
        paths = self._paths(record)
        paths.device_state.unlink(missing_ok=True)
        if paths.ram.exists():
            os.truncate(paths.ram, 0)

    def boot_from_save(self, record: VMRecord, image: Path) -> None:
        """Start a new VM (still 'creating') from a save image whose header names its
        domain: a copy of a template's save (``orchestrator.templates``). Admitted first."""
        self._admit_new(record)
        self.hv.restore_from_file(image)

    def boot_from_state(self, record: VMRecord, template: Capture) -> None:
        """Start a new VM (still 'creating') from a template saved in place: a sparse copy
        of its RAM file becomes the VM's, and its device state is loaded. Admitted first.
        Raises HypervisorUnavailable or OSError (no room for the copy)."""
        self._admit_new(record)
        ramfile.copy_sparse(template.ram, self._paths(record).ram)
        self._load_and_run(record, template.devices)

    def _admit_new(self, record: VMRecord) -> None:
        if record.state is not S.CREATING:
            raise Conflict(f"VM '{record.name}' is not being created: it cannot start "
                           "from a template")
        self.admit(record)

    def pause(self, record: VMRecord, reason: str) -> VMRecord:
        """Freeze the vCPUs; RAM stays, so resuming is instant."""
        self.hv.pause(record.domain_name)
        return self._move(record, S.PAUSED, reason)

    def resume(self, record: VMRecord, reason: str) -> VMRecord:
        """Unfreeze a paused VM (RAM paged out to its file faults back in on demand)."""
        self.admit(record)
        self.hv.resume(record.domain_name)
        # A device state written before a save was interrupted describes the past now.
        self._paths(record).device_state.unlink(missing_ok=True)
        return self._move(record, S.RUNNING, reason)

    def ram_in_file(self, record: VMRecord) -> bool:
        """Does the VM's QEMU on this host map its RAM from a file (so it can be paged out)?"""
        pid = self.hv.qemu_pid(record.domain_name)
        return pid is not None and bool(eviction.ram_mappings(pid))

    def ram_resident_mib(self, record: VMRecord) -> int | None:
        """MiB of the VM's file-backed RAM in host memory; None: anonymous RAM or no QEMU."""
        pid = self.hv.qemu_pid(record.domain_name)
        return eviction.resident_mib(pid) if pid is not None else None

    def evict(self, record: VMRecord, reason: str) -> eviction.Eviction | None:
        """Page a paused VM's file-backed RAM out to disk: it stays paused, its QEMU keeps
        only its own memory, and a resume faults the guest back in. None: nothing to page
        out (anonymous RAM, or no QEMU process on this host)."""
        if self.hv.state(record.domain_name) is not S.PAUSED:
            raise Conflict(f"VM '{record.name}' must be paused to page its RAM out ({reason})")
        pid = self.hv.qemu_pid(record.domain_name)
        if pid is None:
            return None
        try:
            result = eviction.page_out(pid)
        except OSError as exc:
            raise HypervisorUnavailable(f"cannot page out '{record.name}': {exc}") from exc
        if result is not None:
            log.info("evicted '%s' (%s): RAM resident %d -> %d MiB in %.3f s", record.name,
                     reason, result.before_mib, result.after_mib, result.seconds)
        return result

    def save(self, record: VMRecord, reason: str, in_place: bool = True) -> VMRecord:
        """RAM and device state to disk, QEMU gone. Refused without room.

        A VM whose RAM is a file is saved in place (unless not ``in_place``): only the
        device state is written, and a QEMU waits for it. Others get a managed save.
        """
        if in_place and self.ram_in_file(record):
            return self._save_in_place(record, reason)
        self._require_save_space(record)
        self._move(record, S.SAVING, reason)
        try:
            self.hv.managed_save(record.domain_name)
        except HypervisorUnavailable:
            # libvirt leaves the domain as it was: record what it really is.
            self._move(record, self.hv.state(record.domain_name), "save failed")
            raise
        return self._move(record, S.SAVED, reason)

    def _save_in_place(self, record: VMRecord, reason: str) -> VMRecord:
        """Device state to a file, QEMU gone, its RAM file compacted and written to disk
        (``ramfile.settle_file``), then a QEMU waiting for that state.

        A device state that cannot be written leaves the VM as it was (paused).
        """
        paths = self._paths(record)
        self._require_save_space(record, paths.root, SAVE_MARGIN_MIB)
        self._move(record, S.SAVING, reason)
        try:
            self._write_device_state(record, paths.device_state)
        except HypervisorUnavailable:
            self._move(record, self.hv.state(record.domain_name), "save failed")
            raise
        self.faults("save_state_written")
        self._stop_and_settle(record)
        self.faults("save_qemu_gone")
        try:
            self._wait_for_state(record)
        except HypervisorUnavailable as exc:
            # Still saved: its state is on disk, and the restore starts the QEMU itself.
            log.warning("'%s' is saved but no QEMU waits for it (%s)", record.name, exc)
        return self._move(record, S.SAVED, reason)

    def _write_device_state(self, record: VMRecord, target: Path) -> None:
        """Pause the VM (its RAM file must hold still) and write its device state to
        ``target``: complete or absent, never half. The VM stays paused either way."""
        if self.hv.state(record.domain_name) is S.RUNNING:
            self.hv.pause(record.domain_name)
        writing = target.with_suffix(".partial")
        try:
            self.hv.save_device_state(record.domain_name, writing)
            with open(writing, "rb+") as state:
                os.fsync(state.fileno())
            writing.replace(target)
        except (HypervisorUnavailable, OSError) as exc:
            writing.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise HypervisorUnavailable(f"cannot save '{record.name}': {exc}") from exc
            raise

    def _stop_and_settle(self, record: VMRecord) -> None:
        """The QEMU of a VM whose device state is written goes; its RAM file, now no one's
        to change, is compacted and written to disk."""
        self.hv.stop(record.domain_name, force=True)
        compacted = ramfile.settle_file(self._paths(record).ram)
        if compacted is not None:
            log.info("'%s' off: RAM file %d -> %d MiB on disk in %.2f s", record.name,
                     compacted.before_mib, compacted.after_mib, compacted.seconds)

    def _wait_for_state(self, record: VMRecord) -> None:
        """Start the VM's QEMU waiting for its device state: the RAM file is mapped, not
        read, so it holds ~50 MiB while the VM is saved, and restoring skips QEMU's start."""
        self.hv.start_waiting(record.domain_name,
                              incoming_deferred(self.hv.definition(record.domain_name)))

    def drop_waiting(self, record: VMRecord) -> None:
        """Power off the QEMU waiting for a saved VM's state, to free its memory: the VM
        stays saved (the restore starts a QEMU again)."""
        if self.hv.state(record.domain_name) is S.SAVED and self.hv.is_active(record.domain_name):
            self.hv.stop(record.domain_name, force=True)

    def _load_and_run(self, record: VMRecord, devices: Path) -> None:
        """Load the device state ``devices`` into the VM's waiting QEMU (started now if
        there is none) and run it. Raises HypervisorUnavailable."""
        if self.hv.state(record.domain_name) is not S.SAVED:
            self._wait_for_state(record)
        self.hv.load_device_state(record.domain_name, devices)
        self.hv.resume(record.domain_name)

    def _cold_boot_instead(self, record: VMRecord) -> None:
        """A save that would not load: whatever QEMU is left goes, and so do the save and
        the old RAM; the same disk boots cold (the VM is never lost)."""
        self.hv.stop(record.domain_name, force=True)
        if self.hv.has_managed_save(record.domain_name):
            self.hv.remove_managed_save(record.domain_name)
        self._fresh_ram(record)
        self.hv.start(record.domain_name)

    def capture(self, record: VMRecord, into: Capture, while_off: Callable[[], None],
                reason: str) -> str:
        """Save a running VM into the template folder ``into``, run ``while_off`` while its
        QEMU is gone (its disk is quiet), then bring it back from that save, which stays.

        A VM whose RAM is a file leaves its device state and a sparse copy of its RAM
        file; others a libvirt save image. Returns 'restored' or
        'cold-boot-after-bad-save' (the VM is never lost). A save that fails leaves the
        VM running; the failure is raised.
        """
        in_place = self.ram_in_file(record)
        self._require_save_space(record, into.folder)
        self._move(record, S.SAVING, reason)
        try:
            if in_place:
                self._write_device_state(record, into.devices)
            else:
                self.hv.save_to_file(record.domain_name, into.state)
        except HypervisorUnavailable:
            if self.hv.state(record.domain_name) is S.PAUSED:
                self.hv.resume(record.domain_name)
            self._move(record, self.hv.state(record.domain_name), "save failed")
            raise
        # Off, with no save of its own: a command killed from here finds it stopped.
        self._move(record, S.SAVED, reason)
        try:
            if in_place:
                self._stop_and_settle(record)
                ramfile.copy_sparse(self._paths(record).ram, into.ram)
            while_off()
        finally:
            self._move(record, S.RESTORING, reason)
            try:
                if in_place:
                    self._load_and_run(record, into.devices)
                else:
                    self.hv.restore_from_file(into.state)
                path = "restored"
            except HypervisorUnavailable as exc:
                log.warning("'%s' did not come back from its template save (%s): cold boot",
                            record.name, exc)
                self._cold_boot_instead(record)
                path = "cold-boot-after-bad-save"
            self._move(record, S.RUNNING, f"{reason}: {path}")
        return path

    def _require_save_space(self, record: VMRecord, folder: Path | None = None,
                            need_mib: int | None = None) -> None:
        """Room for a save of ``record`` in ``folder`` (default: libvirt's managed saves):
        ``need_mib``, by default its whole RAM."""
        if folder is None:
            free_mib = self.hv.save_folder_free_mib(record.domain_name, self.settings.home)
        else:
            free_mib = shutil.disk_usage(folder).free // MIB
        need_mib = need_mib or record.memory_mib + SAVE_MARGIN_MIB
        if free_mib < need_mib:
            raise InsufficientResources(
                f"cannot save '{record.name}': {free_mib} MiB free where it is saved, up "
                f"to {need_mib} MiB needed; the VM stays as it is (free some disk space)")

    def restore(self, record: VMRecord, reason: str,
                progress: Progress | None = None) -> str:
        """Back from its save (in place, or libvirt's managed save); returns 'restored' or
        'cold-boot-after-bad-save'.

        A save that cannot be restored (a corrupt write, another QEMU) is dropped and the
        same disk boots cold, with a warning: the VM is never lost.
        """
        self.admit(record)
        self._move(record, S.RESTORING, reason)
        try:
            devices = self._paths(record).device_state
            if devices.exists():
                self._load_and_run(record, devices)
                devices.unlink()  # loaded: it describes the past now
            else:
                self.hv.start(record.domain_name)
            path = "restored"
        except HypervisorUnavailable as exc:
            log.warning("restore of '%s' failed (%s): cold boot", record.name, exc)
            if progress:
                progress(f"warning: restore of '{record.name}' failed ({exc}); cold boot")
            self._cold_boot_instead(record)
            path = "cold-boot-after-bad-save"
        self._move(record, S.RUNNING, f"{reason}: {path}")
        return path

    def stop(self, record: VMRecord, reason: str, force: bool = False,
             timeout_s: float = 60.0) -> bool:
        """Shut down (ACPI, then power off); True when the guest shut down cleanly.

        A saved VM's save is dropped: stopped means its next start boots cold. A paused
        guest cannot hear ACPI: it is resumed first when it fits, else powered off.
        """
        live = self.hv.state(record.domain_name)
        force = force or live is S.SAVED  # a QEMU waiting for its state has no guest yet
        if not force and live is S.PAUSED:
            try:
                self.admit(record)
                self.hv.resume(record.domain_name)
            except (InsufficientResources, SecurityHold):
                force = True
        clean = self.hv.stop(record.domain_name, timeout_s=timeout_s, force=force)
        if self.hv.has_managed_save(record.domain_name):
            self.hv.remove_managed_save(record.domain_name)
        self._fresh_ram(record)  # its RAM file would keep ~0.4 GiB of disk for nothing
        self._move(record, S.STOPPED, reason if clean else f"{reason} (powered off)")
        return clean

    def power_off(self, record: VMRecord, reason: str) -> None:
        """Pull the plug. A VM not yet made ('creating') or failed ('error') keeps its state:
        the one is undone by its creator, the other keeps its error for the user."""
        self.hv.stop(record.domain_name, force=True)
        if self.store.get_vm(record.name).state not in (S.CREATING, S.ERROR):
            self._move(record, S.STOPPED, reason)

    def drop_save(self, record: VMRecord, reason: str) -> VMRecord:
        """Forget a save: the VM boots cold next time."""
        if self.hv.is_active(record.domain_name):
            self.hv.stop(record.domain_name, force=True)  # the QEMU waiting for the state
        if self.hv.has_managed_save(record.domain_name):
            self.hv.remove_managed_save(record.domain_name)
        self._fresh_ram(record)
        return self._move(record, S.STOPPED, reason)

    # -- the security policy's actions ---------------------------------------------------

    def hold_suspended(self, record: VMRecord, why: str) -> VMRecord:
        """Pause the VM for the security policy (RAM kept for inspection) and hold it:
        nothing resumes it until :meth:`release`. A VM already out of RAM is held as
        it is."""
        record = self.store.set_hold(record.name, f"suspended by {why}")
        if self.hv.state(record.domain_name) is S.RUNNING:
            self.hv.pause(record.domain_name)
            return self._move(record, S.PAUSED, f"security: {why}")
        return record

    def hold_terminated(self, record: VMRecord, why: str) -> VMRecord:
        """Pull the plug for the security policy (a forced :meth:`stop`); the disk stays,
        the VM is held."""
        self.store.set_hold(record.name, f"terminated by {why}")
        self.stop(record, f"security: {why}", force=True)
        return self.store.get_vm(record.name)

    def release(self, record: VMRecord, resume: bool) -> VMRecord:
        """Lift the hold. A suspended VM resumes with its memory as it was if ``resume``
        (it is the foreground), else stays paused for the swap engine to bring forward;
        a terminated one stays stopped until started."""
        record = self.store.set_hold(record.name, None)
        if resume and self.hv.state(record.domain_name) is S.PAUSED:
            return self.resume(record, "security: released by the user")
        return record

    def revert(self, record: VMRecord, snapshot: str, running: bool) -> VMState:
        """Disk (and memory, for a snapshot taken running) back to ``snapshot``."""
        if running:
            self.admit(record)
        self.drop_waiting(record)  # a QEMU waiting for a device state cannot load a snapshot
        self.hv.snapshot_revert(record.domain_name, snapshot)
        self._paths(record).device_state.unlink(missing_ok=True)  # the snapshot rules now
        state = self.hv.state(record.domain_name)
        self._move(record, state, f"reverted to snapshot '{snapshot}'")
        return state

    def forget_domain(self, domain_name: str) -> None:
        """Power off and undefine a domain no VM record owns (an orphan): no state to move."""
        if self.store.find_vm_by_domain(domain_name) is not None:
            raise Conflict(f"domain '{domain_name}' belongs to a VM: delete the VM instead")
        self.hv.undefine(domain_name)

    def destroy(self, record: VMRecord, files: Path, reason: str = "deleted") -> None:
        """Power off and undefine the domain (save and snapshot metadata too), remove the
        VM's folder, drop the record. The intent is recorded first: the next command's
        reconcile finishes a destroy that was killed midway."""
        log.info("destroying VM '%s' (%s)", record.name, reason)
        if self.store.find_vm(record.name) is not None:
            self._move(record, S.DELETED, reason)
        self.hv.undefine(record.domain_name)
        shutil.rmtree(files, ignore_errors=True)
        self.store.delete_vm(record.name, reason)
