"""Foreground swaps under the memory budget: activate, settle, recover.

One VM is in the foreground. Activating another pauses the current one (its RAM
stays, so this is instant), brings the target up from whatever tier it is in
(paused → resume, saved → restore, stopped → boot), waits for its agent, and
only then moves the previous VM to its tier in the background (``settle``): the
user waits for the restore, not for the save.

Every swap is a row in the handover ledger; a swap that a killed orchestrator
left open is finished or rolled back by the next command (``recover``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from guest_agent.protocol import Subsystem
from orchestrator.budget import BudgetView, measure, projected_mib
from orchestrator.config import SwapPolicy
from orchestrator.errors import (
    GuestError,
    HypervisorUnavailable,
    InsufficientResources,
    InvalidInput,
    NotFound,
)
from orchestrator.models import SwapOutcome, SwapPhase, VMRecord, VMState
from orchestrator.readiness import Stage, wait_ready
from orchestrator.vms import VMService

Progress = Callable[[str], None]
# Fault injection for the crash tests: the process SIGKILLs itself on reaching this phase.
FAULT_ENV = "SOMNUS_FAULT_AT"


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Laps:
    """Seconds spent in each phase of a swap, for ``--json`` and the benchmark."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.times[phase] = round(now - self._last, 3)
        self._last = now


@dataclass
class ActivateResult:
    vm: str
    previous: str | None
    path: str  # already | resumed | restored | cold-boot | cold-boot-after-bad-save
    seconds: float
    seq: int | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class VMStatus:
    name: str
    subsystem: str
    state: str
    tier: str  # foreground | overlay | background | paused | saved | stopped | error
    memory_mib: int
    resident_mib: int


@dataclass
class StatusView:
    policy: str
    foreground: str | None
    budget_limit_mib: int
    budget_used_mib: int
    vms: list[VMStatus]


class SwapEngine:
    """Foreground, tiers and budget over one :class:`VMService`."""

    def __init__(self, service: VMService) -> None:
        self.svc = service
        self.settings = service.settings
        self.store = service.store

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

    # -- activate -------------------------------------------------------------------------

    def activate(self, ref: str, progress: Progress | None = None,
                 settle_in_background: bool = True) -> ActivateResult:
        """Bring ``ref`` to the foreground; returns once its agent answers."""
        started = time.monotonic()
        laps = Laps()
        with self.svc.locked():
            self.recover(progress)
            self.svc.reconcile()
            target = self.resolve(ref)
            previous = self.store.foreground()
            laps.lap("prepare")
            if previous == target.name and self.svc.hv.is_running(target.domain_name):
                self._wait_agent(target, timeout_s=30)
                return ActivateResult(target.name, previous, "already",
                                      round(time.monotonic() - started, 3), None)
            swap = self.store.open_swap(previous, target.name)
            assert swap.seq is not None
            try:
                for record in self._leaving(target):
                    self._pause(record)
                self.store.swap_phase(swap.seq, SwapPhase.FROM_PAUSED)
                laps.lap("pause")
                _fault_point("from_paused")
                self._make_room(target, progress)
                laps.lap("room")
                path = self._bring_up(target, swap.seq, laps, progress)
            except BaseException as exc:
                self._roll_back(swap.seq, previous, target.name, f"{type(exc).__name__}: {exc}")
                raise
            self.store.swap_phase(swap.seq, SwapPhase.TO_READY)
            _fault_point("to_ready")
            self.store.close_swap(swap.seq, SwapOutcome.DONE, path)
            self.store.touch(target.name)
            laps.lap("ledger")
            result = ActivateResult(target.name, previous, path,
                                    round(time.monotonic() - started, 3), swap.seq, laps.times)
        if settle_in_background:
            spawn_settle_worker()
        else:
            self.settle(progress)
        return result

    def _leaving(self, target: VMRecord) -> list[VMRecord]:
        """Running VMs that step back when ``target`` comes forward (they get paused)."""
        running = [r for r in self.store.list_vms()
                   if r.name != target.name and self.svc.hv.is_running(r.domain_name)]
        if self.settings.policy is SwapPolicy.SINGLE_ACTIVE:
            return [r for r in running if not self._overlay_allowed(r, target)]
        previous = self.store.foreground()
        return [r for r in running if r.name == previous]

    def _overlay_allowed(self, record: VMRecord, target: VMRecord) -> bool:
        """The artifacts VM may keep running beside the foreground when the budget allows."""
        if not self.settings.artifacts_overlay or record.subsystem is not Subsystem.ARTIFACTS:
            return False
        return self._budget().fits(0 if self.svc.hv.is_active(target.domain_name)
                                   else projected_mib(target, self.settings))

    def _budget(self) -> BudgetView:
        return measure(self.svc.hv, self.store.list_vms(), self.settings)

    def _make_room(self, target: VMRecord, progress: Progress | None) -> None:
        """Save least recently used resident VMs until the target fits the budget."""
        need = 0 if self.svc.hv.is_active(target.domain_name) else projected_mib(
            target, self.settings)
        budget = self._budget()
        while not budget.fits(need):
            candidates = sorted(
                (r for r in self.store.list_vms()
                 if r.name != target.name and r.name in budget.resident_mib),
                key=lambda r: r.last_active_at,
            )
            if not candidates:
                raise InsufficientResources(
                    f"'{target.name}' needs {need} MiB but the budget is "
                    f"{budget.limit_mib} MiB (SOMNUS_MEMORY_BUDGET_MIB)"
                )
            victim = candidates[0]
            if progress:
                progress(f"budget: saving '{victim.name}' to make room")
            self.demote(victim, VMState.SAVED)
            budget = self._budget()

    def _bring_up(self, target: VMRecord, seq: int, laps: Laps,
                  progress: Progress | None) -> str:
        hv, dom = self.svc.hv, target.domain_name
        live = hv.state(dom)
        if live is VMState.RUNNING:
            path = "already-running"
        elif live is VMState.PAUSED:
            hv.resume(dom)
            path = "resumed"
        elif live is VMState.SAVED:
            self.store.set_state(target.name, VMState.RESTORING, reason="activate")
            try:
                hv.start(dom)
                path = "restored"
            except HypervisorUnavailable as exc:
                # A save file from a corrupt write or another QEMU/machine type: the disk
                # is intact, so boot it cold rather than lose the VM.
                if progress:
                    progress(f"warning: restore of '{target.name}' failed ({exc}); cold boot")
                hv.remove_managed_save(dom)
                hv.start(dom)
                path = "cold-boot-after-bad-save"
        else:
            hv.start(dom)
            path = "cold-boot"
        self.store.swap_phase(seq, SwapPhase.TO_STARTED)
        laps.lap("start")
        _fault_point("to_started")
        if path.startswith("cold-boot"):
            laps.times.update(self.svc.wait_ready(target.name, progress))
        else:
            self._wait_agent(target, timeout_s=60)
            laps.lap("agent")
            self.store.set_state(target.name, VMState.RUNNING, reason=f"activate: {path}")
            self._sync_clock(target)
            laps.lap("clock")
        return path

    def _wait_agent(self, record: VMRecord, timeout_s: float) -> float:
        agent = self.svc.agent(record)

        def answers() -> bool:
            try:
                return agent.health(timeout_s=2).vm_name == record.name
            except GuestError:
                return False

        return wait_ready(
            record.name, [Stage("agent", timeout_s, answers)],
            alive=lambda: self.svc.hv.is_running(record.domain_name),
            log_path=str(self.svc.paths(record.name).serial_log), poll_s=0.05,
        )["agent"]

    def _sync_clock(self, record: VMRecord) -> None:
        """A restored guest's clock stands where it was saved: set it to the host's."""
        with suppress(GuestError):  # best effort: a wrong clock must not fail the swap
            self.svc.agent(record).sync_clock()

    def _pause(self, record: VMRecord) -> None:
        self._flush(record)
        self.svc.hv.pause(record.domain_name)
        self.store.set_state(record.name, VMState.PAUSED, reason="left the foreground")
        self.store.touch(record.name)

    def _flush(self, record: VMRecord) -> None:
        """Ask the agent to write memory and state out before the VM leaves RAM."""
        if self.svc.hv.is_running(record.domain_name):
            # An agent that cannot flush must not block the swap: its SQLite is on disk.
            with suppress(GuestError):
                self.svc.agent(record).flush()

    # -- tiers ----------------------------------------------------------------------------

    def demote(self, record: VMRecord, tier: VMState) -> None:
        """Move a non-foreground VM to ``tier``: PAUSED, SAVED or STOPPED."""
        hv, dom = self.svc.hv, record.domain_name
        live = hv.state(dom)
        if live is tier or live in (VMState.STOPPED, VMState.SAVED, VMState.ERROR):
            return
        self._flush(record)
        if tier is VMState.PAUSED:
            self._pause(record)
        elif tier is VMState.SAVED:
            self._require_save_space(record)
            self.store.set_state(record.name, VMState.SAVING, reason="demote")
            try:
                hv.managed_save(dom)
            except HypervisorUnavailable:
                # libvirt leaves the domain as it was: record what it really is.
                self.store.set_state(record.name, hv.state(dom), reason="save failed")
                raise
            self.store.set_state(record.name, VMState.SAVED, reason="demoted: saved")
        else:
            hv.stop(dom, timeout_s=30)
            self.store.set_state(record.name, VMState.STOPPED, reason="demoted: stopped")

    def _require_save_space(self, record: VMRecord) -> None:
        folder = self.svc.hv.managed_save_path(record.domain_name).parent
        probe = folder if folder.exists() else self.settings.home
        free_mib = shutil.disk_usage(probe).free // (1024 * 1024)
        need_mib = record.memory_mib + 64
        if free_mib < need_mib:
            raise InsufficientResources(
                f"cannot save '{record.name}': {free_mib} MiB free in {probe}, "
                f"up to {need_mib} MiB needed; the VM stays as it is"
            )

    def settle(self, progress: Progress | None = None) -> list[str]:
        """Put every background VM in the tier the policy wants; return what changed."""
        changes: list[str] = []
        with self.svc.locked():
            foreground = self.store.foreground()
            for record in sorted(self.store.list_vms(), key=lambda r: r.last_active_at):
                if record.name == foreground or not self.svc.hv.is_active(record.domain_name):
                    continue
                tier = self._wanted_tier(record, foreground)
                if tier is None or self.svc.hv.state(record.domain_name) is tier:
                    continue
                if progress:
                    progress(f"settle: '{record.name}' -> {tier.value}")
                self.demote(record, tier)
                changes.append(f"{record.name} -> {tier.value}")
        return changes

    def _wanted_tier(self, record: VMRecord, foreground: str | None) -> VMState | None:
        if self.settings.policy is SwapPolicy.BUDGET:
            return VMState.SAVED if not self._budget().fits(0) else None
        fg = self.store.find_vm(foreground) if foreground else None
        if fg is not None and self._overlay_allowed(record, fg):
            return None
        return VMState.SAVED

    # -- recovery -------------------------------------------------------------------------

    def recover(self, progress: Progress | None = None) -> list[str]:
        """Finish or roll back swaps a killed orchestrator left open."""
        notes: list[str] = []
        with self.svc.locked():
            for swap in self.store.open_swaps():
                assert swap.seq is not None
                target = self.store.find_vm(swap.to_vm)
                if target is not None and self.svc.hv.is_running(target.domain_name):
                    try:
                        self._wait_agent(target, timeout_s=self.settings.timeout_agent_s)
                    except GuestError as exc:
                        self._roll_back(swap.seq, swap.from_vm, swap.to_vm, str(exc))
                        notes.append(f"swap {swap.seq}: rolled back ({exc})")
                        continue
                    self.store.set_state(target.name, VMState.RUNNING, reason="recovered swap")
                    self.store.close_swap(swap.seq, SwapOutcome.DONE, "finished by recovery")
                    notes.append(f"swap {swap.seq}: finished ({swap.to_vm} is foreground)")
                else:
                    self._roll_back(swap.seq, swap.from_vm, swap.to_vm, "interrupted")
                    notes.append(f"swap {swap.seq}: rolled back")
            notes.extend(self._restart_crashed_foreground())
        if notes and progress:
            for note in notes:
                progress(note)
        return notes

    def _restart_crashed_foreground(self) -> list[str]:
        """Policy: a foreground VM whose QEMU process died is booted again (its disk is intact)."""
        self.svc.reconcile()
        name = self.store.foreground()
        record = self.store.find_vm(name) if name else None
        if (record is None or not self.settings.restart_crashed
                or record.state is not VMState.ERROR
                or not self.svc.hv.exists(record.domain_name)
                or self.svc.hv.state(record.domain_name) is not VMState.STOPPED):
            return []
        self.svc.hv.start(record.domain_name)
        self.store.set_state(record.name, VMState.RUNNING, reason="restarted after crash")
        return [f"{record.name}: QEMU had died; restarted (cold boot)"]

    def _roll_back(self, seq: int, previous: str | None, target: str, why: str) -> None:
        """Undo a failed swap: the target leaves RAM, the previous VM comes back."""
        hv = self.svc.hv
        target_record = self.store.find_vm(target)
        if target_record is not None and hv.is_active(target_record.domain_name):
            if hv.state(target_record.domain_name) is VMState.PAUSED:
                hv.resume(target_record.domain_name)
            self.demote(target_record, VMState.SAVED)
        prev = self.store.find_vm(previous) if previous else None
        if prev is not None and hv.exists(prev.domain_name):
            state = hv.state(prev.domain_name)
            if state is VMState.PAUSED:
                hv.resume(prev.domain_name)
            elif state in (VMState.SAVED, VMState.STOPPED):
                hv.start(prev.domain_name)
            self.store.set_state(prev.name, VMState.RUNNING, reason="swap rolled back")
        self.store.close_swap(seq, SwapOutcome.ROLLED_BACK, why[:500])

    # -- status ---------------------------------------------------------------------------

    def status(self) -> StatusView:
        with self.svc.locked(wait=False) as idle:
            if idle:  # a swap in flight is not a crashed one: recover only when none runs
                self.recover()
                self.svc.reconcile()
        foreground = self.store.foreground()
        records = self.store.list_vms()
        budget = self._budget()
        fg = self.store.find_vm(foreground) if foreground else None
        rows = []
        for r in records:
            if r.name == foreground:
                tier = "foreground"
            elif r.state is VMState.RUNNING:
                overlay = fg is not None and r.subsystem is Subsystem.ARTIFACTS
                tier = "overlay" if overlay else "background"
            else:
                tier = r.state.value
            rows.append(VMStatus(r.name, r.subsystem.value, r.state.value, tier, r.memory_mib,
                                 budget.resident_mib.get(r.name, 0)))
        return StatusView(self.settings.policy.value, foreground, budget.limit_mib,
                          budget.used_mib, rows)


def spawn_settle_worker() -> None:
    """Finish demotions in a detached process, so the command returns right away."""
    subprocess.Popen(
        [sys.executable, "-m", "orchestrator.settle"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=os.environ.copy(),
    )
