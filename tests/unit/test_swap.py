"""Swap engine logic on libvirt's test driver (pause, managed save, restore are real
libvirt calls there). The guest agent is replaced by a recording stand-in, since the
test driver runs no guest; tests/vm/test_swap.py drives the real thing."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from guest_agent.protocol import AgentStatus, HealthResponse, Subsystem
from orchestrator import swap as swap_module
from orchestrator.budget import BudgetView
from orchestrator.config import SwapPolicy
from orchestrator.errors import HypervisorUnavailable, InsufficientResources, InvalidInput, NotFound
from orchestrator.models import SwapOutcome, SwapPhase, VMRecord, VMState
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService


@dataclass
class StandInAgent:
    name: str
    calls: list[str] = field(default_factory=list)

    def health(self, timeout_s: float = 5.0) -> HealthResponse:
        return HealthResponse(
            status=AgentStatus.OK, vm_name=self.name, agent_version="t", uptime_s=1.0
        )

    def flush(self, timeout_s: float = 10.0) -> None:
        self.calls.append("flush")

    def sync_clock(self, timeout_s: float = 5.0) -> None:
        self.calls.append("clock")


@pytest.fixture
def agents(service: VMService, monkeypatch: pytest.MonkeyPatch) -> dict[str, StandInAgent]:
    made: dict[str, StandInAgent] = {}

    def agent_for(record: VMRecord) -> StandInAgent:
        return made.setdefault(record.name, StandInAgent(record.name))

    monkeypatch.setattr(service, "agent", agent_for)
    monkeypatch.setattr(swap_module, "spawn_settle_worker", lambda: None)
    return made


def running_vm(service: VMService, name: str, subsystem: Subsystem = Subsystem.CHAT) -> None:
    service.create(name, subsystem, memory_mib=512, wait=False)


def states(service: VMService) -> dict[str, VMState]:
    return {r.name: service.hv.state(r.domain_name) for r in service.store.list_vms()}


def test_single_active_keeps_one_vm_running(
    service: VMService, agents: dict[str, StandInAgent]
) -> None:
    for name in ("chat", "research"):
        running_vm(service, name, Subsystem(name))
    engine = SwapEngine(service)
    first = engine.activate("chat", settle_in_background=False)
    assert first.vm == "chat" and first.path == "already-running"
    assert states(service) == {"chat": VMState.RUNNING, "research": VMState.SAVED}

    second = engine.activate("research", settle_in_background=False)
    assert (second.previous, second.path) == ("chat", "restored")
    assert states(service) == {"chat": VMState.SAVED, "research": VMState.RUNNING}
    assert agents["chat"].calls[-1] == "flush"  # flushed before it left RAM
    assert "clock" in agents["research"].calls  # resynced after the restore

    back = engine.activate("chat", settle_in_background=False)
    assert back.path == "restored"
    assert service.store.foreground() == "chat"
    assert [s.outcome for s in service.store.swaps()] == [SwapOutcome.DONE] * 3


def test_activating_the_foreground_again_does_nothing(
    service: VMService, agents: dict[str, StandInAgent]
) -> None:
    running_vm(service, "chat")
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    assert engine.activate("chat").path == "already"
    assert len(service.store.swaps()) == 1


def test_paused_vm_resumes(service: VMService, agents: dict[str, StandInAgent]) -> None:
    running_vm(service, "chat")
    running_vm(service, "research", Subsystem.RESEARCH)
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    service.hv.start(service.store.get_vm("research").domain_name)
    engine.demote(service.store.get_vm("research"), VMState.PAUSED)
    assert engine.activate("research", settle_in_background=False).path == "resumed"


def test_resolve_by_subsystem_name_and_errors(
    service: VMService, agents: dict[str, StandInAgent]
) -> None:
    running_vm(service, "deep", Subsystem.RESEARCH)
    engine = SwapEngine(service)
    assert engine.resolve("research").name == "deep"
    with pytest.raises(NotFound, match="no artifacts VM"):
        engine.resolve("artifacts")
    with pytest.raises(NotFound, match="no VM or subsystem named 'nope'"):
        engine.resolve("nope")
    running_vm(service, "wide", Subsystem.RESEARCH)
    with pytest.raises(InvalidInput, match="several research VMs"):
        engine.resolve("research")


def test_artifacts_overlay_stays_beside_the_foreground(
    service: VMService, agents: dict[str, StandInAgent]
) -> None:
    running_vm(service, "chat")
    running_vm(service, "artifacts", Subsystem.ARTIFACTS)
    SwapEngine(service).activate("chat", settle_in_background=False)
    assert states(service) == {"chat": VMState.RUNNING, "artifacts": VMState.RUNNING}
    view = SwapEngine(service).status()
    assert {v.name: v.tier for v in view.vms} == {"chat": "foreground", "artifacts": "overlay"}


def with_budget(monkeypatch: pytest.MonkeyPatch, limit: int, rss: int) -> None:
    """Pretend each resident QEMU process holds ``rss`` MiB (the test driver has none)."""

    def fake_measure(hv, records, settings):  # type: ignore[no-untyped-def]
        resident = {r.name: rss for r in records if hv.is_active(r.domain_name)}
        return BudgetView(limit, resident)

    monkeypatch.setattr(swap_module, "measure", fake_measure)


def test_budget_saves_least_recently_used_to_make_room(
    service: VMService, agents: dict[str, StandInAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settings.policy = SwapPolicy.BUDGET
    for name in ("chat", "research", "artifacts"):
        running_vm(service, name, Subsystem(name))
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    engine.activate("research", settle_in_background=False)  # chat paused, both resident
    assert states(service)["chat"] is VMState.PAUSED
    service.hv.managed_save(service.store.get_vm("artifacts").domain_name)
    # Room for two resident VMs (512 + 256 overhead each) but not three.
    with_budget(monkeypatch, limit=1600, rss=700)
    engine.activate("artifacts", settle_in_background=False)
    assert states(service) == {
        "chat": VMState.SAVED,
        "research": VMState.PAUSED,
        "artifacts": VMState.RUNNING,
    }


def test_budget_refuses_when_nothing_can_make_room(
    service: VMService, agents: dict[str, StandInAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    running_vm(service, "chat")
    running_vm(service, "research", Subsystem.RESEARCH)
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    with_budget(monkeypatch, limit=600, rss=0)
    with pytest.raises(InsufficientResources, match="budget is 600 MiB"):
        engine.activate("research", settle_in_background=False)
    # Rolled back: chat is the foreground and runs again, nothing else does.
    assert service.store.foreground() == "chat"
    assert states(service)["chat"] is VMState.RUNNING
    assert service.store.swaps()[0].outcome is SwapOutcome.ROLLED_BACK


def test_interrupted_swap_before_target_started_rolls_back(
    service: VMService, agents: dict[str, StandInAgent]
) -> None:
    running_vm(service, "chat")
    running_vm(service, "research", Subsystem.RESEARCH)
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    # What a killed 'activate research' leaves: ledger open, chat paused, research saved.
    swap = service.store.open_swap("chat", "research")
    service.hv.pause(service.store.get_vm("chat").domain_name)
    service.store.swap_phase(swap.seq, SwapPhase.FROM_PAUSED)  # type: ignore[arg-type]
    notes = engine.recover()
    assert notes == [f"swap {swap.seq}: rolled back"]
    assert states(service) == {"chat": VMState.RUNNING, "research": VMState.SAVED}
    assert service.store.open_swaps() == []


def test_interrupted_swap_after_target_started_is_finished(
    service: VMService, agents: dict[str, StandInAgent]
) -> None:
    running_vm(service, "chat")
    running_vm(service, "research", Subsystem.RESEARCH)
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    swap = service.store.open_swap("chat", "research")
    service.hv.pause(service.store.get_vm("chat").domain_name)
    service.hv.start(service.store.get_vm("research").domain_name)  # restored, not confirmed
    assert engine.recover() == [f"swap {swap.seq}: finished (research is foreground)"]
    assert service.store.foreground() == "research"
    engine.settle()
    assert states(service) == {"chat": VMState.SAVED, "research": VMState.RUNNING}


def test_unrestorable_save_falls_back_to_cold_boot(
    service: VMService, agents: dict[str, StandInAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    running_vm(service, "chat")
    running_vm(service, "research", Subsystem.RESEARCH)
    engine = SwapEngine(service)
    engine.activate("chat", settle_in_background=False)
    real_start = service.hv.start
    domain = service.store.get_vm("research").domain_name

    def start(name: str) -> None:
        if name == domain and service.hv.has_managed_save(name):
            raise HypervisorUnavailable("cannot start: image is not a QEMU save file")
        real_start(name)

    monkeypatch.setattr(service.hv, "start", start)
    monkeypatch.setattr(service, "wait_ready", lambda name, progress=None: {"agent": 0.1})
    warnings: list[str] = []
    result = engine.activate("research", progress=warnings.append, settle_in_background=False)
    assert result.path == "cold-boot-after-bad-save"
    assert any("restore of 'research' failed" in w for w in warnings)
    assert not service.hv.has_managed_save(domain)


def test_failed_save_leaves_the_vm_as_it_was(
    service: VMService, agents: dict[str, StandInAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    running_vm(service, "chat")
    record = service.store.get_vm("chat")

    def disk_full(name: str) -> None:
        raise HypervisorUnavailable("cannot save: No space left on device")

    monkeypatch.setattr(service.hv, "managed_save", disk_full)
    with pytest.raises(HypervisorUnavailable, match="No space"):
        SwapEngine(service).demote(record, VMState.SAVED)
    assert service.hv.state(record.domain_name) is VMState.RUNNING
    assert service.store.get_vm("chat").state is VMState.RUNNING
