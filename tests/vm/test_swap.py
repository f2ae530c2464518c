"""Hot-swap with real VMs: single-active (the previous VM saved in place: its device
state on disk, its RAM in its file, a QEMU waiting), the paged-out and managed-save
tiers, the budget, kill -9 mid-swap and mid-save, corrupt saves, a dead QEMU process,
snapshots.

Two VMs are booted once for the module; the tests run in file order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from core.config import SwapPolicy
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator.budget import qemu_rss_mib
from orchestrator.host import Host
from orchestrator.models import SwapOutcome, VMState
from orchestrator.seams import FAULT_ENV
from orchestrator.swap import EVICTED_SHARE, SwapEngine, Tier
from orchestrator.views import status_view
from orchestrator.vms import VMService
from tests.vm.sampling import running_vms, sampling

pytestmark = pytest.mark.vm

A, B = "swap-a", "swap-b"
# Which VMs ran at each 50 ms sample while the pair's project VM was created.
PROJECT_CREATE_SAMPLES: list[set[str]] = []
MEMORY_MIB = 768
# A QEMU waiting for a saved VM's state (measured 57-58 MiB); its guest RAM is not in it.
WAITING_RSS_MIB = 100


def mark(service: VMService, name: str) -> None:
    """A marker file on disk; a process and a tmpfs file that only survive in RAM."""
    assert service.run(name, f"echo {name}-data > ~/marker && sync").exit_code == 0
    in_ram = f"echo {name}-ram > /dev/shm/marker; nohup sleep 86400 >/dev/null 2>&1 & "
    service.run(name, in_ram + "echo $! > /dev/shm/sleeper.pid")


@pytest.fixture(scope="module")
def pair(host: Host, image: ImageManifest) -> Iterator[tuple[str, str]]:
    """Two VMs, each with a marker file and a long-lived process. B is an (empty) project
    made while A runs, so it ends in the foreground: single-active moved A out."""
    service, projects = host.vms, host.projects()
    # Both boot cold: a template of their shape is test_templates.py's subject.
    service.settings.templates = False
    try:
        print(A, service.create(A, Subsystem.CHAT, memory_mib=MEMORY_MIB)[1])
        mark(service, A)
        with sampling(lambda: running_vms(service)) as samples:
            projects.create(B, memory_mib=MEMORY_MIB)
    finally:
        service.settings.templates = True
    PROJECT_CREATE_SAMPLES.extend(samples)
    mark(service, B)
    yield A, B
    if projects.store.find(B) is not None:
        projects.delete(B)
    if service.store.find_vm(A):
        service.delete(A)


def test_project_create_never_runs_two_vms(pair: tuple[str, str], service: VMService) -> None:
    samples = PROJECT_CREATE_SAMPLES
    assert len(samples) > 20 and all(len(s) <= 1 for s in samples), samples
    assert {A, B} & set().union(*samples)  # the samples did see the VMs
    assert service.store.foreground() == B


def engine(service: VMService) -> SwapEngine:
    swap = service.foreground
    assert isinstance(swap, SwapEngine)
    return swap


def running(service: VMService) -> set[str]:
    return {n for n in (A, B) if service.hv.is_running(service.domain_name(n))}


def memory_kept(service: VMService, name: str) -> bool:
    """True when the VM's RAM survived (the sleeper process still lives)."""
    result = service.run(name, "kill -0 $(cat /dev/shm/sleeper.pid) && cat ~/marker "
                               "/dev/shm/marker")
    return result.exit_code == 0 and result.stdout.split() == [f"{name}-data", f"{name}-ram"]


def test_single_active_a_b_a_keeps_one_running_and_state_intact(
    service: VMService, pair: tuple[str, str]
) -> None:
    swap = engine(service)
    swap.activate(A)
    assert running(service) == {A}
    with sampling(lambda: running(service)) as samples:
        to_b = swap.activate(B)
        back = swap.activate(A)
    # Each VM out of the foreground was saved in place and came back from that.
    assert to_b.path == "restored" and back.path == "restored", (to_b, back)
    assert samples and all(len(s) <= 1 for s in samples), samples
    record_b = service.store.get_vm(B)
    assert record_b.state is VMState.SAVED
    assert service.paths(B).device_state.stat().st_size < 8 << 20  # devices, not RAM
    assert not service.hv.has_managed_save(service.domain_name(B))
    # Its QEMU waits with the RAM file mapped but untouched.
    assert qemu_rss_mib(service.hv, service.domain_name(B)) <= WAITING_RSS_MIB
    assert memory_kept(service, A)


def test_the_budget_tiers_page_out_and_managed_save_keep_memory(
    service: VMService, pair: tuple[str, str]
) -> None:
    """With room in the budget the previous VM stays paused; under pressure it is paged
    out, then saved. Both come back with their RAM."""
    settings, swap = service.settings, engine(service)
    old = (settings.policy, settings.memory_budget_mib)
    settings.policy, settings.memory_budget_mib = SwapPolicy.BUDGET, 8192
    try:
        assert swap.activate(B).path == "restored"
        record_a = service.store.get_vm(A)
        assert service.lifecycle.current(record_a) is VMState.PAUSED  # room: it stays
        swap.demote(record_a, Tier.EVICTED)
        resident = service.lifecycle.ram_resident_mib(record_a)
        assert resident is not None and resident <= MEMORY_MIB * EVICTED_SHARE, resident
        assert swap.activate(A).path == "paged-in"
        assert memory_kept(service, A)
        service.lifecycle.save(service.store.get_vm(B), "test: managed", in_place=False)
        assert service.hv.has_managed_save(service.domain_name(B))
        assert swap.activate(B).path == "restored"
        assert memory_kept(service, B)
    finally:
        settings.policy, settings.memory_budget_mib = old
    swap.activate(A)


def test_status_reports_foreground_tiers_and_budget(service: VMService,
                                                    pair: tuple[str, str]) -> None:
    view = status_view(service)
    assert view.foreground == A and view.policy == "single-active"
    tiers = {v.name: v.tier for v in view.vms}
    assert tiers == {A: "foreground", B: "saved"}
    resident = {v.name: v.resident_mib for v in view.vms}
    assert resident[B] < resident[A]  # B's RAM is in its file on disk
    assert 0 < view.budget_used_mib <= view.budget_limit_mib


def test_budget_is_never_exceeded_while_swapping(service: VMService,
                                                 pair: tuple[str, str]) -> None:
    settings = service.settings
    old = (settings.policy, settings.memory_budget_mib)
    # Room for one resident VM and the next one's projection, not for two resident VMs.
    settings.policy = SwapPolicy.BUDGET
    resident_a = qemu_rss_mib(service.hv, service.domain_name(A))
    settings.memory_budget_mib = resident_a + MEMORY_MIB + settings.qemu_overhead_mib + 64
    try:
        swap = engine(service)

        def total() -> int:
            return sum(qemu_rss_mib(service.hv, service.domain_name(n)) for n in (A, B)
                       if service.hv.is_active(service.domain_name(n)))

        with sampling(total) as samples:
            for target in (B, A, B, A):
                swap.activate(target)
        peak = max(samples)
        assert peak <= settings.memory_budget_mib, (peak, settings.memory_budget_mib)
        assert memory_kept(service, A)
    finally:
        settings.policy, settings.memory_budget_mib = old
        engine(service).settle()


@pytest.mark.parametrize("phase", ["from_paused", "to_started", "to_ready"])
def test_killed_mid_swap_the_next_command_reconciles(
    service: VMService, pair: tuple[str, str], vm_env: dict[str, str], phase: str
) -> None:
    current = service.store.foreground()
    target = B if current == A else A
    killed = subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", "activate", target],
        env={**os.environ, **vm_env, FAULT_ENV: phase}, capture_output=True, text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL
    open_swaps = [s.seq for s in service.store.open_swaps()]
    assert open_swaps != []  # the ledger shows the interrupted swap
    before = {n: service.hv.state(service.domain_name(n)) for n in (A, B)}

    status = somnus_cli(vm_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    # A read recovers nothing: the swap stays open and no VM moved.
    assert [s.seq for s in service.store.open_swaps()] == open_swaps
    assert {n: service.hv.state(service.domain_name(n)) for n in (A, B)} == before

    recovered = somnus_cli(vm_env, "recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert service.store.open_swaps() == []
    last = service.store.swaps(1)[0]
    expected = SwapOutcome.ROLLED_BACK if phase == "from_paused" else SwapOutcome.DONE
    assert last.outcome is expected
    foreground = service.store.foreground()
    assert foreground == (current if expected is SwapOutcome.ROLLED_BACK else target)
    assert running(service) == {foreground}  # no VM lost, none running twice
    engine(service).settle()
    assert foreground is not None and memory_kept(service, foreground)


def somnus_cli(vm_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cli import main; main()", *args],
                          env={**os.environ, **vm_env}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("phase", ["save_state_written", "save_qemu_gone"])
def test_killed_mid_save_the_next_command_reconciles(
    service: VMService, pair: tuple[str, str], vm_env: dict[str, str], phase: str
) -> None:
    """The settle worker killed while it saves the previous VM in place: the VM is paused
    (its QEMU still there) or saved (its state on disk), and comes back with its RAM."""
    swap = engine(service)
    settings = service.settings
    old = (settings.policy, settings.memory_budget_mib)
    settings.policy, settings.memory_budget_mib = SwapPolicy.BUDGET, 8192
    try:
        swap.activate(B)  # room: A stays paused, for the worker to save
    finally:
        settings.policy, settings.memory_budget_mib = old
    killed = subprocess.run([sys.executable, "-m", "orchestrator.settle"],
                            env={**os.environ, **vm_env, FAULT_ENV: phase},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert service.store.get_vm(A).state is VMState.SAVING
    expected = VMState.PAUSED if phase == "save_state_written" else VMState.SAVED
    notes = swap.recover()
    assert f"{A}: an interrupted save -> {expected.value}" in notes
    assert swap.activate(A).path == ("resumed" if expected is VMState.PAUSED else "restored")
    assert memory_kept(service, A)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "managed"])
def test_corrupt_save_falls_back_to_cold_boot_with_data_intact(
    service: VMService, pair: tuple[str, str], in_place: bool
) -> None:
    swap = engine(service)
    swap.activate(A)
    domain_b = service.domain_name(B)
    if in_place:
        assert service.lifecycle.current(service.store.get_vm(B)) is VMState.SAVED
        save_file, at = service.paths(B).device_state, 0
    else:
        swap.activate(B)
        swap.activate(A)
        service.lifecycle.drop_waiting(service.store.get_vm(B))
        # Back in RAM by hand and saved libvirt's way (the tier of VMs without a RAM file).
        service.lifecycle.restore(service.store.get_vm(B), "test")
        service.lifecycle.pause(service.store.get_vm(B), "test")
        service.lifecycle.save(service.store.get_vm(B), "test", in_place=False)
        save_file, at = service.hv.managed_save_path(domain_b), 2 << 20
    with open(save_file, "r+b") as handle:  # scribble over the state
        handle.seek(at)
        handle.write(os.urandom(1 << 20))
    warnings: list[str] = []
    result = swap.activate(B, progress=warnings.append)
    assert result.path == "cold-boot-after-bad-save"
    assert any("restore of 'swap-b' failed" in w for w in warnings)
    marker = service.run(B, "cat ~/marker")
    assert marker.stdout.strip() == f"{B}-data"  # the disk survived; only RAM was lost
    mark(service, B)


def test_dead_qemu_is_detected_and_restarted(service: VMService,
                                            pair: tuple[str, str]) -> None:
    foreground = service.store.foreground()
    assert foreground == B
    pid = service.hv.qemu_pid(service.domain_name(B))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while service.hv.is_active(service.domain_name(B)) and time.monotonic() < deadline:
        time.sleep(0.2)
    notes = engine(service).recover()
    assert notes == [f"{B}: QEMU process died -> error",
                     f"{B}: QEMU had died; restarted (cold boot)"]
    reasons = [h.reason for h in service.store.history(B)]
    assert "QEMU process died" in reasons and reasons[-1] == "restarted after crash"
    service.wait_ready(service.store.get_vm(B))
    assert service.run(B, "cat ~/marker").stdout.strip() == f"{B}-data"


def test_snapshot_create_revert_delete(service: VMService, pair: tuple[str, str]) -> None:
    snap = service.snapshot_create(B, "before", "a test")
    assert snap.state == "running"  # taken with memory
    assert service.run(B, "echo changed > ~/marker && sync").exit_code == 0
    assert service.snapshot_revert(B, "before") is VMState.RUNNING
    engine(service)._wait_agent(service.store.get_vm(B), timeout_s=60)
    assert service.run(B, "cat ~/marker").stdout.strip() == f"{B}-data"
    assert [s.name for s in service.snapshot_list(B)] == ["before"]
    service.snapshot_delete(B, "before")
    assert service.snapshot_list(B) == []
