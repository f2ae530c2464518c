"""Foreground swaps under the memory budget: policy only (who steps back, to which tier).

One VM is in the foreground. A VM entering RAM (``activate``, and also ``vm create``,
``vm start`` and a revert to a running snapshot, through :meth:`SwapEngine.entering`)
pauses the current one (its RAM stays, so this is instant), makes room under the
budget, and only after the target is up moves the previous VM to its tier in the
background (``settle``): the user waits for the restore, not for the save.

Every swap is a row in the handover ledger; a swap that a killed orchestrator left
open is finished or rolled back by the next command (``recover``). The moves
themselves are :class:`~orchestrator.lifecycle.Lifecycle`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum

from core.config import SwapPolicy
from core.errors import GuestError, InsufficientResources, InvalidInput, NotFound
from core.types import Progress
from guest_agent.protocol import Subsystem
from orchestrator.budget import BudgetView, projected_mib
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import SwapOutcome, SwapPhase, VMRecord, VMState
from orchestrator.readiness import Stage, wait_ready
from orchestrator.seams import NO_ENTRY, Entry, FaultHook, Settler, env_faults
from orchestrator.views import ActivateView
from orchestrator.vms import VMService

log = logging.getLogger(__name__)
# Resident file-backed RAM at or below this share of the guest's is "paged out".
EVICTED_SHARE = 0.05


class Tier(StrEnum):
    """Where a VM out of the foreground rests, from the fastest to come back to the cheapest."""

    PAUSED = "paused"  # vCPUs frozen, RAM resident: back in a resume
    EVICTED = "evicted"  # paused, its file-backed RAM paged out to disk: back in a resume
    SAVED = "saved"  # device state on disk (RAM in its file, or in libvirt's managed save)
    STOPPED = "stopped"


class Laps:
    """Seconds spent in each phase of a swap, for ``--json`` and the benchmark."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str, at: float | None = None) -> None:
        """End ``phase`` now, or at the monotonic time ``at`` when it ended earlier."""
        now = time.monotonic() if at is None else at
        self.times[phase] = round(now - self._last, 3)
        self._last = now


class _Handover:
    """The ledger row of one VM entering the foreground."""

    def __init__(self, engine: SwapEngine, seq: int) -> None:
        self.engine = engine
        self.seq = seq
        self.detail = ""
        self.closed_at: float | None = None  # monotonic time the row closed: target is up

    def started(self) -> None:
        self.engine.store.swap_phase(self.seq, SwapPhase.TO_STARTED)
        self.engine.faults("to_started")


class SwapEngine:
    """Foreground, tiers and budget over one :class:`VMService`."""

    def __init__(self, vms: VMService, settler: Settler, faults: FaultHook = env_faults) -> None:
        self.vms = vms
        self.lifecycle = vms.lifecycle
        self.settings = vms.settings
        self.store = vms.store
        self.settler = settler
        self.faults = faults

    @property
    def hv(self) -> Hypervisor:
        return self.vms.hv

    # -- resolving ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> VMRecord:
        """A VM by name, or by subsystem when exactly one VM serves it."""
        record = self.store.find_vm(ref)
        if record is not None:
            return record
        try:
            subsystem = Subsystem(ref)
        except ValueError:
            raise NotFound(f"no VM or subsystem named '{ref}' (see 'somnus status')") from None
        matches = [r for r in self.store.list_vms() if r.subsystem is subsystem]
        if not matches:
            raise NotFound(f"no {ref} VM yet: 'somnus vm create {ref} --subsystem {ref}'")
        if len(matches) > 1:
            names = ", ".join(r.name for r in matches)
            raise InvalidInput(f"several {ref} VMs ({names}): name the one to activate")
        return matches[0]

    # -- entering the foreground ----------------------------------------------------------

    @contextmanager
    def entering(self, target: VMRecord, progress: Progress | None = None) -> Iterator[Entry]:
        """Make ``target`` the foreground around the block that brings it up.

        Before the block: a ledger row, the VMs that step back paused, room made under
        the budget. If the block fails, the swap is rolled back (the previous VM comes
        back); once it succeeds the row is closed and the settle worker is asked to
        move the previous VM to its tier.
        """
        with self.vms.lock():
            # Before anyone moves: a VM that can never fit, or that the policy holds.
            self.lifecycle.check_can_fit(target.name, target.memory_mib)
            self.lifecycle.check_not_held(target)
            previous = self.store.foreground()
            swap = self.store.open_swap(previous, target.name)
            assert swap.seq is not None
            handover = _Handover(self, swap.seq)
            try:
                for record in self._leaving(target):
                    self._pause(record)
                self.store.swap_phase(swap.seq, SwapPhase.FROM_PAUSED)
                self.faults("from_paused")
                self._make_room(target, progress)
                yield handover
            except BaseException as exc:
                try:
                    self._roll_back(swap.seq, previous, target.name,
                                    f"{type(exc).__name__}: {exc}")
                except Exception:
                    # The ledger stays open: the next command's recovery tries again.
                    log.exception("rolling back swap %s failed", swap.seq)
                raise
            self.store.swap_phase(swap.seq, SwapPhase.TO_READY)
            self.faults("to_ready")
            self.store.close_swap(swap.seq, SwapOutcome.DONE, handover.detail)
            self.store.touch(target.name)
            handover.closed_at = time.monotonic()
        self.settler.settle_later()

    def activate(self, ref: str, progress: Progress | None = None) -> ActivateView:
        """Bring ``ref`` to the foreground; returns once its agent answers."""
        started = time.monotonic()
        laps = Laps()
        with self.vms.changing():
            target = self.resolve(ref)
            previous = self.store.foreground()
            laps.lap("prepare")
            if previous == target.name and self.hv.is_running(target.domain_name):
                self._wait_agent(target, timeout_s=30)
                return ActivateView(vm=target.name, previous=previous, path="already",
                                    seconds=round(time.monotonic() - started, 3))
            with self.entering(target, progress) as entry:
                assert isinstance(entry, _Handover)
                laps.lap("pause")
                path = self._bring_up(target, entry, laps, progress)
                entry.detail = path
            # The user's wait ends when the ledger row closes. Settling the previous VM
            # comes after: a detached worker's start, or the whole save when inline.
            done = entry.closed_at or time.monotonic()
            laps.lap("ledger", at=done)
            laps.lap("settle")
            return ActivateView(vm=target.name, previous=previous, path=path,
                                seconds=round(done - started, 3), seq=entry.seq,
                                timings=laps.times)

    def overlay(self, ref: str, progress: Progress | None = None) -> str:
        """Bring the artifacts VM up beside the foreground VM, which keeps running (the
        overlay tier); with nothing in the foreground this is an activation. Refused,
        naming the VM that would have to step back, when the budget cannot hold both."""
        with self.vms.changing():
            target = self.resolve(ref)
            fg_name = self.store.foreground()
            fg = self.store.find_vm(fg_name) if fg_name else None
            if fg is None or fg.name == target.name or not self.hv.is_running(fg.domain_name):
                return self.activate(target.name, progress).path
            if self.hv.is_running(target.domain_name):
                return "already-running"
            if target.subsystem is not Subsystem.ARTIFACTS:
                raise InvalidInput(f"only the artifacts VM runs beside the foreground; "
                                   f"'somnus activate {target.name}' brings it forward")
            budget = self._budget()
            need = self._need(target, budget)
            if not self.settings.artifacts_overlay or not budget.fits(need):
                limit = budget.limit_mib
                raise InsufficientResources(
                    f"'{target.name}' ({need} MiB) does not fit beside '{fg.name}' under the "
                    f"{limit} MiB budget: 'somnus activate {target.name}' lets '{fg.name}' "
                    "step back, or raise SOMNUS_MEMORY_BUDGET_MIB")
            if progress:
                progress(f"'{target.name}' comes up beside '{fg.name}' (overlay)")
            return self._bring_up(target, NO_ENTRY, Laps(), progress)

    def _leaving(self, target: VMRecord) -> list[VMRecord]:
        """Running VMs that step back when ``target`` comes forward (they get paused)."""
        running = [r for r in self.store.list_vms()
                   if r.name != target.name and self.hv.is_running(r.domain_name)]
        if self.settings.policy is SwapPolicy.SINGLE_ACTIVE:
            return [r for r in running if not self._overlay_allowed(r, target)]
        previous = self.store.foreground()
        return [r for r in running if r.name == previous]

    def _overlay_allowed(self, record: VMRecord, target: VMRecord) -> bool:
        """The artifacts VM may keep running beside the foreground when the budget allows."""
        if not self.settings.artifacts_overlay or record.subsystem is not Subsystem.ARTIFACTS:
            return False
        return self._budget().fits(self._need(target))

    def _budget(self) -> BudgetView:
        return self.lifecycle.budget()

    def _need(self, target: VMRecord, budget: BudgetView | None = None) -> int:
        """What ``target`` may still add to the budget once it runs."""
        budget = budget or self._budget()
        return max(0, projected_mib(target, self.settings)
                   - budget.resident_mib.get(target.name, 0))

    def _make_room(self, target: VMRecord, progress: Progress | None) -> None:
        """Page out, then save, least recently used resident VMs until the target fits."""
        budget = self._budget()
        paged_out: set[str] = set()
        while not budget.fits(self._need(target, budget)):
            candidates = sorted(
                (r for r in self.store.list_vms()
                 if r.name != target.name and r.name in budget.resident_mib),
                key=lambda r: r.last_active_at,
            )
            if not candidates:
                raise InsufficientResources(
                    f"'{target.name}' needs {self._need(target, budget)} MiB but the budget "
                    f"is {budget.limit_mib} MiB (SOMNUS_MEMORY_BUDGET_MIB)"
                )
            victim = candidates[0]
            if self.lifecycle.current(victim) is VMState.SAVED:
                if progress:
                    progress(f"budget: '{victim.name}' (saved) lets its waiting QEMU go")
                self.lifecycle.drop_waiting(victim)
                budget = self._budget()
                continue
            tier = Tier.SAVED
            if victim.name not in paged_out and self.lifecycle.ram_in_file(victim):
                tier = Tier.EVICTED  # cheap (no QEMU restart to come back), so first
                paged_out.add(victim.name)
            if progress:
                progress(f"budget: '{victim.name}' -> {tier.value} to make room")
            self.demote(victim, tier)
            budget = self._budget()

    def _bring_up(self, target: VMRecord, entry: Entry, laps: Laps,
                  progress: Progress | None) -> str:
        live = self.lifecycle.current(target)
        if live is VMState.RUNNING:
            path = "already-running"
        elif live is VMState.PAUSED:
            path = "paged-in" if self._is_evicted(target) else "resumed"
            self.lifecycle.resume(target, f"activate: {path}")
        elif live is VMState.SAVED:
            path = self.lifecycle.restore(target, "activate", progress)
        else:
            self.lifecycle.boot(target, "activate: cold boot")
            path = "cold-boot"
        entry.started()
        laps.lap("start")
        if path.startswith("cold-boot"):
            laps.times.update(self.vms.wait_ready(target, progress))
        else:
            # A resumed or restored guest's clock stands where it stopped. Setting it is
            # the probe too: one round trip to a guest that is paging itself back in.
            self._wait_agent(target, timeout_s=60, probe=lambda: self._clock_synced(target))
            laps.lap("agent")
            self.lifecycle.mark_ready(target, f"activate: {path}")
        return path

    def _wait_agent(self, record: VMRecord, timeout_s: float,
                    probe: Callable[[], bool] | None = None) -> float:
        answers = probe or (lambda: self.vms.agent_answers(record, timeout_s=2))
        return wait_ready(
            record.name, [Stage("agent", timeout_s, answers)],
            why_down=lambda: self.hv.why_down(record.domain_name),
            log_path=str(self.vms.paths(record.name).serial_log), poll_s=0.05,
        )["agent"]

    def _clock_synced(self, record: VMRecord) -> bool:
        """Set the guest's clock to the host's; True once the VM's own agent did it."""
        try:
            answered = self.vms.agent(record).sync_clock(timeout_s=2).vm_name
        except GuestError:
            return False
        return answered in (record.name, None)  # None: an agent from before vm_name

    def _pause(self, record: VMRecord) -> None:
        self._flush(record)
        self.lifecycle.pause(record, "left the foreground")
        self.store.touch(record.name)

    def _flush(self, record: VMRecord) -> None:
        """Ask the agent to write memory and state out before the VM leaves RAM."""
        if self.hv.is_running(record.domain_name):
            # An agent that cannot flush must not block the swap: its SQLite is on disk.
            with suppress(GuestError):
                self.vms.agent(record).flush()

    # -- tiers ----------------------------------------------------------------------------


    def _is_evicted(self, record: VMRecord) -> bool:
        resident = self.lifecycle.ram_resident_mib(record)
        return resident is not None and resident <= record.memory_mib * EVICTED_SHARE

    def _in_tier(self, record: VMRecord, tier: Tier) -> bool:
        live = self.lifecycle.current(record)
        if tier is Tier.EVICTED:
            return live is VMState.PAUSED and self._is_evicted(record)
        return live.value == tier.value

    def demote(self, record: VMRecord, tier: Tier) -> None:
        """Move a non-foreground VM to ``tier`` (from RAM; a saved or stopped VM stays)."""
        live = self.lifecycle.current(record)
        if live in (VMState.STOPPED, VMState.SAVED, VMState.ERROR) or self._in_tier(record, tier):
            return
        if tier in (Tier.PAUSED, Tier.EVICTED):
            if live is not VMState.PAUSED:
                self._pause(record)
            if tier is Tier.EVICTED:
                self.lifecycle.evict(record, "out of the foreground")
            return
        self._flush(record)
        if tier is Tier.SAVED:
            self.lifecycle.save(record, "demoted: saved")
        else:
            self.lifecycle.stop(record, "demoted: stopped", timeout_s=30)

    def settle(self, progress: Progress | None = None) -> list[str]:
        """Put every background VM in the tier the policy wants; return what changed."""
        changes: list[str] = []
        with self.vms.changing():
            foreground = self.store.foreground()
            for record in sorted(self.store.list_vms(), key=lambda r: r.last_active_at):
                if record.name == foreground or not self.hv.is_active(record.domain_name):
                    continue
                tier = self._wanted_tier(record, foreground)
                if tier is None or self._in_tier(record, tier):
                    continue
                if progress:
                    progress(f"settle: '{record.name}' -> {tier.value}")
                self.demote(record, tier)
                changes.append(f"{record.name} -> {tier.value}")
        return changes

    def _wanted_tier(self, record: VMRecord, foreground: str | None) -> Tier | None:
        if self.settings.policy is SwapPolicy.BUDGET:
            if self._budget().fits(0):
                return None
            if self.lifecycle.ram_in_file(record) and not self._is_evicted(record):
                return Tier.EVICTED  # paging out keeps it paused: the cheapest step first
            return Tier.SAVED
        fg = self.store.find_vm(foreground) if foreground else None
        if fg is not None and self._overlay_allowed(record, fg):
            return None
        # RAM in a file: saved in place (~50 MiB resident, back in a device-state load);
        # otherwise libvirt's managed save.
        return Tier.SAVED

    # -- recovery -------------------------------------------------------------------------

    def recover(self, progress: Progress | None = None) -> list[str]:
        """Reconcile, then finish or roll back swaps a killed orchestrator left open."""
        with self.vms.lock():
            notes = self.vms.reconcile()
            for swap in self.store.open_swaps():
                assert swap.seq is not None
                target = self.store.find_vm(swap.to_vm)
                if target is not None and self.hv.is_running(target.domain_name):
                    try:
                        self._wait_agent(target, timeout_s=self.settings.timeout_agent_s)
                    except GuestError as exc:
                        self._roll_back(swap.seq, swap.from_vm, swap.to_vm, str(exc))
                        notes.append(f"swap {swap.seq}: rolled back ({exc})")
                        continue
                    self.lifecycle.mark_ready(target, "recovered swap")
                    self.store.close_swap(swap.seq, SwapOutcome.DONE, "finished by recovery")
                    notes.append(f"swap {swap.seq}: finished ({swap.to_vm} is foreground)")
                else:
                    self._roll_back(swap.seq, swap.from_vm, swap.to_vm, "interrupted")
                    notes.append(f"swap {swap.seq}: rolled back")
            notes.extend(self._restart_crashed_foreground())
        for note in notes:
            log.info("recover: %s", note)
            if progress:
                progress(note)
        return notes

    def _restart_crashed_foreground(self) -> list[str]:
        """Policy: a foreground VM whose QEMU process died is booted again (its disk is intact)."""
        name = self.store.foreground()
        record = self.store.find_vm(name) if name else None
        if (record is None or not self.settings.restart_crashed
                or record.state is not VMState.ERROR
                or self.lifecycle.domain_state(record) is not VMState.STOPPED):
            return []
        try:
            self.lifecycle.boot(record, "restarted after crash")
        except InsufficientResources as exc:
            return [f"{record.name}: QEMU had died; not restarted: {exc}"]
        return [f"{record.name}: QEMU had died; restarted (cold boot)"]

    def _roll_back(self, seq: int, previous: str | None, target: str, why: str) -> None:
        """Undo a failed swap: the target leaves RAM, the previous VM comes back."""
        log.warning("swap %s to '%s' rolled back: %s", seq, target, why)
        moving = self.store.find_vm(target)
        if moving is not None and self.hv.is_active(moving.domain_name):
            if moving.state in (VMState.CREATING, VMState.ERROR):
                self.lifecycle.power_off(moving, "swap rolled back")
            else:
                self.demote(moving, Tier.SAVED)
        prev = self.store.find_vm(previous) if previous else None
        # A VM the security policy holds stays down: only its release brings it back.
        if prev is not None and not prev.security_hold and self.hv.exists(prev.domain_name):
            state = self.lifecycle.current(prev)
            if state is VMState.PAUSED:
                self.lifecycle.resume(prev, "swap rolled back")
            elif state is VMState.SAVED:
                self.lifecycle.restore(prev, "swap rolled back")
            elif state is VMState.STOPPED:
                self.lifecycle.boot(prev, "swap rolled back")
        self.store.close_swap(seq, SwapOutcome.ROLLED_BACK, why[:500])
