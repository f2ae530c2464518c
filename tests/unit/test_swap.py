"""Swap policy on libvirt's test driver (pause, managed save, restore are real libvirt
calls there). Each VM's agent is a recording stand-in (tests/fakes.py), since the test
driver runs no guest; tests/vm/test_swap.py drives the real thing."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import SwapPolicy
from core.errors import HypervisorUnavailable, InsufficientResources, InvalidInput, NotFound
from guest_agent.protocol import Subsystem
from orchestrator import eviction
from orchestrator.host import Host
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import SwapOutcome, SwapPhase, VMState
from orchestrator.swap import Tier
from orchestrator.views import status_view
from orchestrator.vms import VMService
from tests.fakes import FaultInjected, RaiseAt, StandInAgents, meter_of, settler_of


def running_vm(host: Host, name: str, subsystem: Subsystem = Subsystem.CHAT) -> None:
    """A VM as 'vm create' leaves it: in the foreground (the previous one paused)."""
    host.vms.create(name, subsystem, memory_mib=512, wait=False)


def chat_in_front_research_saved(host: Host) -> None:
    """The usual start: 'chat' in the foreground, 'research' settled to its save."""
    running_vm(host, "research", Subsystem.RESEARCH)
    running_vm(host, "chat")
    host.swap.settle()


def states(service: VMService) -> dict[str, VMState]:
    return {r.name: service.hv.state(r.domain_name) for r in service.store.list_vms()}


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
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    host.swap.settle()
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


class PagedRam:
    """File-backed guest RAM as lifecycle sees it (the test driver has no QEMU process):
    resident MiB per QEMU pid, emptied by a page-out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resident: dict[int, int] = {}
        self.order: list[str] = []
        monkeypatch.setattr(Hypervisor, "qemu_pid",
                            lambda _hv, name: 1000 + sum(map(ord, name)))
        monkeypatch.setattr(eviction, "resident_mib", lambda pid: self.resident.get(pid, 400))
        monkeypatch.setattr(eviction, "ram_mappings", lambda pid: [
            eviction.RamMapping(0, 512 << 20, Path(f"/ram/{pid}/pc.ram"))])
        monkeypatch.setattr(eviction, "page_out", self._page_out)

    def _page_out(self, pid: int) -> eviction.Eviction:
        self.order.append("page_out")
        before, self.resident[pid] = self.resident.get(pid, 400), 0
        return eviction.Eviction(before, 0, 0.01)


def test_with_ram_in_a_file_the_previous_vm_is_paged_out_not_saved(
    host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    ram = PagedRam(monkeypatch)
    running_vm(host, "chat")
    running_vm(host, "research", Subsystem.RESEARCH)
    assert host.swap.settle() == ["chat -> evicted"]
    assert states(host.vms) == {"chat": VMState.PAUSED, "research": VMState.RUNNING}
    assert host.swap.settle() == []  # already paged out: nothing to do
    back = host.swap.activate("chat")
    assert back.path == "paged-in" and ram.order == ["page_out"]
    assert host.swap.settle() == ["research -> evicted"]
    assert not host.vms.hv.has_managed_save(host.store.get_vm("research").domain_name)


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
    assert said == ["budget: 'research' -> evicted to make room",
                    "budget: 'research' -> saved to make room"]
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
