"""Swap policy on libvirt's test driver (pause, managed save, restore are real libvirt
calls there). Each VM's agent is a recording stand-in (tests/fakes.py), since the test
driver runs no guest; tests/vm/test_swap.py drives the real thing."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings, SwapPolicy
from core.errors import (
    Conflict,
    HypervisorUnavailable,
    InsufficientResources,
    InvalidInput,
    NotFound,
)
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator.host import Host
from orchestrator.models import SwapOutcome, SwapPhase, VMState
from orchestrator.swap import Tier
from orchestrator.views import status_view
from orchestrator.vms import VMService
from tests.fakes import (
    FaultInjected,
    PagedRam,
    RaiseAt,
    StandInAgents,
    fake_host,
    meter_of,
    settler_of,
)


def running_vm(host: Host, name: str, subsystem: Subsystem = Subsystem.CHAT) -> None:
    """A VM as 'vm create' leaves it: in the foreground (the previous one paused)."""
    host.vms.create(name, subsystem, memory_mib=512, wait=False)


def chat_in_front_research_saved(host: Host) -> None:
    """The usual start: 'chat' in the foreground, 'research' settled to its save."""
    running_vm(host, "research", Subsystem.RESEARCH)
    running_vm(host, "chat")
    host.swap.settle()


def research_in_front_chat_saved(host: Host) -> None:
    """'research' in the foreground, 'chat' settled to its save (in place with PagedRam)."""
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    host.swap.settle()


def states(service: VMService) -> dict[str, VMState]:
    return {r.name: service.lifecycle.current(r) for r in service.store.list_vms()}


def test_create_takes_the_foreground_and_settle_saves_the_previous(
    host: Host, agents: StandInAgents
) -> None:
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    assert host.store.foreground() == "research"
    assert states(host.vms) == {"chat": VMState.PAUSED, "research": VMState.RUNNING}
    assert settler_of(host).asked == 2  # each create asked for the previous VM to settle
    assert host.swap.settle() == ["chat -> saved"]
    assert states(host.vms) == {"chat": VMState.SAVED, "research": VMState.RUNNING}


def test_single_active_swaps_back_and_forth(host: Host, agents: StandInAgents) -> None:
    research_in_front_chat_saved(host)
    back = host.swap.activate("chat")
    assert (back.previous, back.path) == ("research", "restored")
    assert agents.made["research"].calls[-1] == "flush"  # flushed before it left RAM
    assert "clock" in agents.made["chat"].calls  # resynced after the restore
    host.swap.settle()
    assert states(host.vms) == {"chat": VMState.RUNNING, "research": VMState.SAVED}
    again = host.swap.activate("research")
    assert again.path == "restored"
    assert [s.outcome for s in host.store.swaps()] == [SwapOutcome.DONE] * 4


def test_activating_the_foreground_again_does_nothing(host: Host, agents: StandInAgents) -> None:
    running_vm(host, "chat")
    assert host.swap.activate("chat").path == "already"
    assert len(host.store.swaps()) == 1


def test_paused_vm_resumes(host: Host, agents: StandInAgents) -> None:
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)  # chat paused, not settled yet
    assert host.swap.activate("chat").path == "resumed"


def test_resolve_by_subsystem_name_and_errors(host: Host, agents: StandInAgents) -> None:
    running_vm(host, "deep", Subsystem.RESEARCH)
    assert host.swap.resolve("research").name == "deep"
    with pytest.raises(NotFound, match="no artifacts VM"):
        host.swap.resolve("artifacts")
    with pytest.raises(NotFound, match="no VM or subsystem named 'nope'"):
        host.swap.resolve("nope")
    running_vm(host, "wide", Subsystem.RESEARCH)
    with pytest.raises(InvalidInput, match="several research VMs"):
        host.swap.resolve("research")


def test_artifacts_overlay_stays_beside_the_foreground(host: Host, agents: StandInAgents) -> None:
    running_vm(host, "artifacts", Subsystem.ARTIFACTS)
    running_vm(host, "chat")
    host.swap.settle()
    assert states(host.vms) == {"chat": VMState.RUNNING, "artifacts": VMState.RUNNING}
    view = status_view(host.vms)
    assert {v.name: v.tier for v in view.vms} == {"chat": "foreground", "artifacts": "overlay"}


def test_the_artifacts_vm_comes_up_beside_the_foreground_or_says_who_would_step_back(
    host: Host, agents: StandInAgents
) -> None:
    running_vm(host, "artifacts", Subsystem.ARTIFACTS)
    running_vm(host, "chat")
    host.swap.demote(host.store.get_vm("artifacts"), Tier.SAVED)
    assert host.swap.overlay("artifacts") == "restored"
    assert states(host.vms) == {"chat": VMState.RUNNING, "artifacts": VMState.RUNNING}
    assert host.store.foreground() == "chat"  # the foreground did not change
    assert host.swap.overlay("artifacts") == "already-running"
    host.swap.demote(host.store.get_vm("artifacts"), Tier.SAVED)
    meter_of(host).set(limit=1000, rss=700)  # room for one
    with pytest.raises(InsufficientResources, match="'somnus activate artifacts' lets 'chat' "
                                                    "step back"):
        host.swap.overlay("artifacts")
    assert states(host.vms)["chat"] is VMState.RUNNING


def test_budget_saves_least_recently_used_to_make_room(host: Host, agents: StandInAgents) -> None:
    host.settings.policy = SwapPolicy.BUDGET
    for name in ("chat", "research", "artifacts"):
        running_vm(host, name, Subsystem(name))
    host.swap.activate("chat")
    host.swap.activate("research")  # the others paused, all resident
    host.swap.demote(host.store.get_vm("artifacts"), Tier.SAVED)
    assert states(host.vms)["chat"] is VMState.PAUSED
    # Room for two resident VMs (512 + 256 overhead each) but not three.
    meter_of(host).set(limit=1600, rss=700)
    host.swap.activate("artifacts")
    assert states(host.vms) == {
        "chat": VMState.SAVED,
        "research": VMState.PAUSED,
        "artifacts": VMState.RUNNING,
    }


def device_state(host: Host, name: str) -> Path:
    return host.vms.paths(name).device_state


def test_with_ram_in_a_file_the_previous_vm_is_saved_in_place(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    ram = PagedRam(monkeypatch)
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    assert host.swap.settle() == ["chat -> saved"]
    # Its device state is on disk, its RAM in its file, and a QEMU waits for it.
    assert states(host.vms) == {"chat": VMState.SAVED, "research": VMState.RUNNING}
    assert ram.order == ["save_device_state", "start_waiting"]
    assert device_state(host, "chat").exists()
    assert not host.vms.hv.has_managed_save(host.store.get_vm("chat").domain_name)
    assert host.swap.settle() == []  # already saved: nothing to do
    back = host.swap.activate("chat")
    assert back.path == "restored" and ram.order[-1] == "load_device_state"
    assert not device_state(host, "chat").exists()  # loaded: it describes the past now
    assert "clock" in agents.made["chat"].calls
    assert host.swap.settle() == ["research -> saved"]


def test_a_saved_vm_whose_qemu_went_is_restored_by_starting_one(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    ram = PagedRam(monkeypatch)
    research_in_front_chat_saved(host)
    chat = host.store.get_vm("chat")
    host.vms.hv.stop(chat.domain_name, force=True)  # e.g. the host rebooted
    assert host.lifecycle.current(chat) is VMState.SAVED  # its state is on disk
    assert host.vms.reconcile() == []
    assert host.swap.activate("chat").path == "restored"
    assert ram.order[-2:] == ["start_waiting", "load_device_state"]


def test_a_device_state_that_does_not_load_boots_the_disk_cold(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    PagedRam(monkeypatch)
    research_in_front_chat_saved(host)
    device_state(host, "chat").write_bytes(b"corrupt")
    ram_file = host.vms.paths("chat").ram
    ram_file.write_bytes(b"old guest memory")
    said: list[str] = []
    restored = host.lifecycle.restore(host.store.get_vm("chat"), "test", progress=said.append)
    assert restored == "cold-boot-after-bad-save"
    assert any("restore of 'chat' failed" in line for line in said)
    assert not device_state(host, "chat").exists()
    assert ram_file.stat().st_size == 0  # a cold boot starts from empty RAM
    assert states(host.vms)["chat"] is VMState.RUNNING


@pytest.mark.parametrize("point", ["save_state_written", "save_qemu_gone"])
def test_a_save_in_place_interrupted_is_settled_by_reconcile(
    settings: Settings, image: ImageManifest, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    PagedRam(monkeypatch)
    host = fake_host(settings, faults=RaiseAt(point))
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    with pytest.raises(FaultInjected):
        host.swap.settle()
    assert host.store.get_vm("chat").state is VMState.SAVING
    # Before the QEMU went the VM is still paused (its state file is stale then);
    # after, its device state and RAM file are its save.
    expected = VMState.PAUSED if point == "save_state_written" else VMState.SAVED
    assert host.vms.reconcile() == [f"chat: an interrupted save -> {expected.value}"]
    assert host.swap.activate("chat").path == ("resumed" if expected is VMState.PAUSED
                                               else "restored")
    assert not device_state(host, "chat").exists()


def test_to_make_room_a_saved_vm_lets_its_waiting_qemu_go(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    PagedRam(monkeypatch)
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    host.swap.settle()  # chat saved in place, its QEMU waiting (resident)
    host.settings.policy = SwapPolicy.BUDGET
    meter_of(host).set(limit=1100, rss=300)
    said: list[str] = []
    host.vms.create("artifacts", Subsystem.ARTIFACTS, memory_mib=512, wait=False,
                    progress=said.append)
    assert "budget: 'chat' (saved) lets its waiting QEMU go" in said
    chat = host.store.get_vm("chat")
    assert not host.vms.hv.is_active(chat.domain_name)
    assert host.lifecycle.current(chat) is VMState.SAVED


def test_to_make_room_a_vm_is_paged_out_before_it_is_saved(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    PagedRam(monkeypatch)
    host.settings.policy = SwapPolicy.BUDGET
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)  # chat paused, resident
    meter_of(host).set(limit=1000, rss=700)  # paging out does not free enough here
    said: list[str] = []
    host.swap.activate("chat", progress=said.append)
    # (The stand-in meter says its waiting QEMU holds 700 MiB too: that goes last.)
    assert said == ["budget: 'research' -> evicted to make room",
                    "budget: 'research' -> saved to make room",
                    "budget: 'research' (saved) lets its waiting QEMU go"]
    assert states(host.vms) == {"chat": VMState.RUNNING, "research": VMState.SAVED}


def test_budget_refuses_when_nothing_can_make_room(host: Host, agents: StandInAgents) -> None:
    chat_in_front_research_saved(host)
    meter_of(host).set(limit=600, rss=0)
    with pytest.raises(InsufficientResources, match="needs 768 MiB") as caught:
        host.swap.activate("research")
    assert "--memory 344" in str(caught.value)  # the error names the fix
    # Refused before anything moved: chat still runs, no swap was opened.
    assert host.store.foreground() == "chat"
    assert states(host.vms) == {"chat": VMState.RUNNING, "research": VMState.SAVED}
    assert len(host.store.swaps()) == 2


@pytest.mark.parametrize("point", ["from_paused", "to_started"])
def test_a_swap_failing_at_any_phase_rolls_back(
    host: Host, agents: StandInAgents, point: str
) -> None:
    chat_in_front_research_saved(host)
    fault = host.swap.faults
    assert isinstance(fault, RaiseAt)
    fault.point = point
    with pytest.raises(FaultInjected):
        host.swap.activate("research")
    assert host.store.foreground() == "chat"
    assert states(host.vms) == {"chat": VMState.RUNNING, "research": VMState.SAVED}
    assert host.store.swaps()[0].outcome is SwapOutcome.ROLLED_BACK


def test_a_swap_stopped_once_the_target_is_ready_is_finished_by_recovery(
    host: Host, agents: StandInAgents
) -> None:
    chat_in_front_research_saved(host)
    fault = host.swap.faults
    assert isinstance(fault, RaiseAt)
    fault.point = "to_ready"
    with pytest.raises(FaultInjected):
        host.swap.activate("research")
    assert len(host.store.open_swaps()) == 1
    fault.point = None
    assert host.swap.recover()[-1].endswith("finished (research is foreground)")
    assert host.store.foreground() == "research"


def test_interrupted_swap_before_target_started_rolls_back(
    host: Host, agents: StandInAgents
) -> None:
    chat_in_front_research_saved(host)
    # What a killed 'activate research' leaves: ledger open, chat paused, research saved.
    swap = host.store.open_swap("chat", "research")
    host.vms.hv.pause(host.store.get_vm("chat").domain_name)
    host.store.swap_phase(swap.seq, SwapPhase.FROM_PAUSED)  # type: ignore[arg-type]
    notes = host.swap.recover()
    assert notes == ["chat: running -> paused", f"swap {swap.seq}: rolled back"]
    assert states(host.vms) == {"chat": VMState.RUNNING, "research": VMState.SAVED}
    assert host.store.open_swaps() == []


def test_interrupted_swap_after_target_started_is_finished(
    host: Host, agents: StandInAgents
) -> None:
    chat_in_front_research_saved(host)
    swap = host.store.open_swap("chat", "research")
    host.vms.hv.pause(host.store.get_vm("chat").domain_name)
    host.vms.hv.start(host.store.get_vm("research").domain_name)  # restored, not confirmed
    notes = host.swap.recover()
    assert notes[-1] == f"swap {swap.seq}: finished (research is foreground)"
    assert host.store.foreground() == "research"
    host.swap.settle()
    assert states(host.vms) == {"chat": VMState.SAVED, "research": VMState.RUNNING}


def test_a_read_never_recovers_an_open_swap(host: Host, agents: StandInAgents) -> None:
    chat_in_front_research_saved(host)
    swap = host.store.open_swap("chat", "research")
    host.vms.hv.pause(host.store.get_vm("chat").domain_name)
    before = states(host.vms)
    view = status_view(host.vms)
    assert {v.name: v.state for v in view.vms}["chat"] is VMState.PAUSED  # live, computed
    assert host.store.get_vm("chat").state is VMState.RUNNING  # ...and not written
    assert [s.seq for s in host.store.open_swaps()] == [swap.seq]
    assert states(host.vms) == before
    host.vms.stop("research")  # the next mutating command recovers first
    assert host.store.open_swaps() == []


def test_unrestorable_save_falls_back_to_cold_boot(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat_in_front_research_saved(host)
    hv = host.vms.hv
    real_start = hv.start
    domain = host.store.get_vm("research").domain_name

    def start(name: str) -> None:
        if name == domain and hv.has_managed_save(name):
            raise HypervisorUnavailable("cannot start: image is not a QEMU save file")
        real_start(name)

    # libvirt's test driver restores any save: make this one fail as a corrupt file does.
    monkeypatch.setattr(hv, "start", start)
    host.settings.timeout_ssh_s = 0.1  # the cold boot's SSH stage has no guest to reach
    warnings: list[str] = []
    with pytest.raises(Exception, match="ssh"):
        host.swap.activate("research", progress=warnings.append)
    assert any("restore of 'research' failed" in w for w in warnings)
    assert not hv.has_managed_save(domain)  # the bad save is gone; the disk booted cold
    record = host.store.get_vm("research")
    assert record.state is VMState.ERROR and "ssh" in (record.last_error or "")
    assert any("cold-boot-after-bad-save" in h.reason for h in host.store.history("research"))


def test_failed_save_leaves_the_vm_as_it_was(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    running_vm(host, "chat")
    record = host.store.get_vm("chat")
    hv = host.vms.hv

    def disk_full(name: str) -> None:
        raise HypervisorUnavailable("cannot save: No space left on device")

    monkeypatch.setattr(hv, "managed_save", disk_full)
    with pytest.raises(HypervisorUnavailable, match="No space"):
        host.swap.demote(record, Tier.SAVED)
    assert hv.state(record.domain_name) is VMState.RUNNING
    assert host.store.get_vm("chat").state is VMState.RUNNING


def test_a_vm_saved_in_place_is_not_snapshotted_until_it_is_back(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    PagedRam(monkeypatch)
    research_in_front_chat_saved(host)
    with pytest.raises(Conflict, match="'chat' is saved: bring it back first"):
        host.vms.snapshot_create("chat", "before")
    assert device_state(host, "chat").exists()  # nothing was lost
