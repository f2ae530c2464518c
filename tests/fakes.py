"""The fakes the host's seams take (``orchestrator.seams``), shared by every unit test.

libvirt's test driver runs no guest, so a stand-in answers for each VM's agent; the
settle runner does nothing until a test calls ``settle()`` itself; the fault hook
raises instead of killing the process. ``PagedRam`` plays a QEMU whose RAM is a file.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import Busy, GuestError, GuestInvalidInput, GuestNotFound, HypervisorUnavailable
from guest_agent.protocol import (
    AgentStatus,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClockResponse,
    HealthResponse,
    InfoResponse,
    MemoryAddResponse,
    MemoryCreate,
    MemoryImportResponse,
    MemoryListResponse,
    MemoryRecord,
    MemorySearchRequest,
    MemorySearchResponse,
    Subsystem,
)
from guest_agent.protocol.collab import CollabAction, TurnReply, TurnRequest
from guest_agent.protocol.research import ResearchRunList
from guest_agent.protocol.runs import RunEvent, RunLimits, RunRequest, WebRequest, WebStatus
from guest_agent.protocol.security import GuestMetrics
from guest_agent.sandbox.bwrap import RunFolder
from guest_agent.sandbox.cgroups import ProcessGroupJail
from guest_agent.sandbox.runner import Sandbox, SandboxBusy, SandboxError
from guest_agent.sandbox.web import WebArtifacts
from orchestrator import eviction
from orchestrator.budget import BudgetView
from orchestrator.host import Host
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import VMRecord, VMState

_USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
_TIMINGS = {"prompt_n": 3, "prompt_ms": 1.0, "predicted_n": 2, "predicted_ms": 1.0,
            "predicted_per_second": 2000.0}
_REPORT = {"strategy": "prompt_manager", "role": None, "layers": [], "truncated": [],
           "context_window": {"max_tokens": 1024, "current_tokens": 5,
                              "reserved_output_tokens": 16, "available_tokens": 1003,
                              "utilization_percent": 0.5, "system_tokens": 0, "user_tokens": 3,
                              "layer_tokens": {}}}


class StandInAgent:
    """Answers like a guest agent and records what it was asked; ``broken`` makes every
    call fail as a dead guest's would."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.broken = False
        self.calls: list[str] = []
        self.memories: list[MemoryRecord] = []
        self._sandbox: Sandbox | None = None
        self._web: WebArtifacts | None = None
        self.guest: GuestMetrics | None = None  # what ``security`` reports

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.broken:
            raise GuestError(f"agent of '{self.name}' unreachable")

    def health(self, timeout_s: float = 5.0) -> HealthResponse:
        self._check("health")
        return HealthResponse(status=AgentStatus.OK, vm_name=self.name, agent_version="t",
                              uptime_s=1.0)

    def flush(self, timeout_s: float = 10.0) -> None:
        self._check("flush")

    def info(self, timeout_s: float = 5.0) -> InfoResponse:
        self._check("info")
        return InfoResponse(vm_name=self.name, subsystem=Subsystem.CHAT, hostname=self.name,
                            kernel="stand-in", python="3", agent_version="t", packages={},
                            models=[])

    def research_runs(self, timeout_s: float = 30.0) -> ResearchRunList:
        """A research VM's runs: none (the research pipeline has its own tests)."""
        self._check("research_runs")
        return ResearchRunList(runs=[])

    def security(self, since: int = 0, timeout_s: float = 5.0) -> GuestMetrics:
        """The scripted report (``self.guest``, a quiet guest by default), with the events
        numbered after ``since``, as the agent answers."""
        self._check("security")
        report = self.guest or GuestMetrics(
            vm_name=self.name, at=time.time(), agent_started=1.0, process_count=40,
            top_processes=[], listening=[], net_rx_bytes=0, net_tx_bytes=0,
            disk_used_percent=20.0, failed_ssh_logins=0, failed_agent_auths=0,
            prompt_injections=0, sandbox_limit_hits=0, sandbox_escape_attempts=0)
        return report.model_copy(update={"events": [e for e in report.events if e.seq > since]})

    def sync_clock(self, timeout_s: float = 5.0) -> ClockResponse:
        self._check("clock")
        return ClockResponse(skew_s=0.0, set=False, vm_name=self.name)

    def collab_turn(self, request: TurnRequest, timeout_s: float = 3600.0) -> TurnReply:
        """A turn that says who spoke, with one finding: the host's loop runs to its end."""
        self._check("collab_turn")
        said = f"{self.name} as {request.role.name}, turn {request.turn}"
        return TurnReply(action=CollabAction.SAY, content=said, findings=[said])

    def _answer(self, request: ChatCompletionRequest) -> str:
        return f"{self.name} heard: {request.messages[-1].content}"

    def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        self._check("chat")
        return ChatCompletionResponse.model_validate({
            "id": "c1", "created": 1, "model": "stand-in", "usage": _USAGE, "timings": _TIMINGS,
            "somnus": _REPORT, "choices": [{"message": {"role": "assistant",
                                                        "content": self._answer(request)},
                                            "finish_reason": "stop"}]})

    def chat_stream(self, request: ChatCompletionRequest) -> Iterator[ChatCompletionChunk]:
        self._check("chat")
        base = {"id": "c1", "created": 1, "model": "stand-in"}
        yield ChatCompletionChunk.model_validate(
            {**base, "choices": [{"delta": {"role": "assistant"}}]})
        for word in self._answer(request).split(" "):
            yield ChatCompletionChunk.model_validate(
                {**base, "choices": [{"delta": {"content": word + " "}}]})
        yield ChatCompletionChunk.model_validate(
            {**base, "choices": [{"delta": {}, "finish_reason": "stop"}], "usage": _USAGE,
             "timings": _TIMINGS, "somnus": _REPORT})

    def memory_add(self, item: MemoryCreate, background: bool = False) -> MemoryAddResponse:
        self._check("memory_add")
        record = MemoryRecord(**item.model_dump(), memory_id=f"m{len(self.memories)}",
                              content_hash="h", created_at=1.0, last_accessed=1.0)
        self.memories.append(record)
        return MemoryAddResponse(memory=record, deduplicated=False, embedding_pending=background)

    def memory_search(self, request: MemorySearchRequest) -> MemorySearchResponse:
        self._check("memory_search")
        hits = [{"memory": m, "score": 1.0} for m in self.memories if request.query in m.content]
        return MemorySearchResponse.model_validate({"hits": hits[: request.top_k]})

    def memory_list(self, offset: int = 0, limit: int = 100,
                    memory_type: object = None) -> MemoryListResponse:
        self._check("memory_list")
        return MemoryListResponse(memories=self.memories[offset:offset + limit],
                                  total=len(self.memories))

    def memory_export(self) -> str:
        self._check("memory_export")
        return "".join(m.model_dump_json() + "\n" for m in self.memories)

    def memory_import(self, jsonl: str) -> MemoryImportResponse:
        self._check("memory_import")
        lines = [MemoryRecord.model_validate_json(x) for x in jsonl.splitlines() if x.strip()]
        self.memories.extend(lines)
        return MemoryImportResponse(imported=len(lines), deduplicated=0)

    @property
    def sandbox(self) -> Sandbox:
        """The agent's own runner over a process group, in a folder of its own."""
        if self._sandbox is None:
            self._sandbox = Sandbox(Path(tempfile.mkdtemp(prefix="standin-runs-")),
                                    ProcessGroupJail(), plain_launcher)
        return self._sandbox

    def run_stream(self, request: RunRequest) -> Iterator[RunEvent]:
        self._check("run")
        try:
            events = self.sandbox.start(request)
        except SandboxBusy as exc:  # as AgentClient reports a 503
            raise Busy(str(exc), 1, self.name) from exc
        yield from events

    def run_file(self, run_id: str, path: str, timeout_s: float = 60.0) -> bytes:
        self._check("run_file")
        return self.sandbox.produced_file(run_id, path).read_bytes()

    @property
    def web(self) -> WebArtifacts:
        """The agent's own web port, on an ephemeral loopback port."""
        if self._web is None:
            self._web = WebArtifacts(self.sandbox, port=0, host="127.0.0.1")
        return self._web

    def web_open(self, request: WebRequest, timeout_s: float = 120.0) -> WebStatus:
        self._check("web_open")
        try:
            return self.web.open(request)
        except SandboxError as exc:  # as AgentClient reports the agent's 400
            raise GuestInvalidInput(str(exc)) from exc

    def web_status(self, timeout_s: float = 10.0) -> WebStatus:
        self._check("web_status")
        return self._opened(self.web.status())

    def web_stop(self, timeout_s: float = 30.0) -> WebStatus:
        self._check("web_stop")
        return self._opened(self.web.stop())

    def _opened(self, status: WebStatus | None) -> WebStatus:
        if status is None:  # as AgentClient reports the agent's 404
            raise GuestNotFound(f"agent of '{self.name}': no web artifact is open")
        return status


def plain_launcher(folder: RunFolder, argv: list[str], env: dict[str, str],
                   limits: RunLimits) -> list[str]:
    """Run a sandbox's command as is, on the host (no bubblewrap): the host's Python."""
    return [sys.executable if argv[0] == "python3" else argv[0], *argv[1:]]


class StandInAgents:
    """The agent factory: one stand-in per VM name, kept so tests can inspect or break it."""

    def __init__(self) -> None:
        self.made: dict[str, StandInAgent] = {}
        self.broken = False  # every agent, present and future

    def __call__(self, record: VMRecord) -> StandInAgent:  # the AgentFactory seam
        agent = self.made.setdefault(record.name, StandInAgent(record.name))
        agent.broken = self.broken or agent.broken
        return agent

    def break_all(self, broken: bool = True) -> None:
        self.broken = broken
        for agent in self.made.values():
            agent.broken = broken


class IdleSettler:
    """Settles nothing on its own: tests call ``host.swap.settle()`` when they mean it."""

    def __init__(self) -> None:
        self.asked = 0

    def settle_later(self) -> None:
        self.asked += 1


class FaultInjected(Exception):
    """Raised at the fault point a test chose (in place of the process being killed)."""


class RaiseAt:
    """The fault hook: raise :class:`FaultInjected` when ``point`` is reached."""

    def __init__(self, point: str | None = None) -> None:
        self.point = point
        self.reached: list[str] = []

    def __call__(self, point: str) -> None:
        self.reached.append(point)
        if point == self.point:
            raise FaultInjected(point)


class ScriptedMeter:
    """The budget meter: each QEMU process (running or paused) holds ``rss`` MiB against
    ``limit`` (the test driver's domains have no QEMU to measure)."""

    def __init__(self, hypervisor: Callable[[], Hypervisor], limit: int = 6144,
                 rss: int = 0) -> None:
        self._hypervisor = hypervisor
        self.limit = limit
        self.rss = rss

    def set(self, limit: int, rss: int) -> None:
        self.limit, self.rss = limit, rss

    def __call__(self, records: list[VMRecord]) -> BudgetView:
        hv = self._hypervisor()
        return BudgetView(self.limit, {r.name: self.rss for r in records
                                       if hv.is_active(r.domain_name)})


def fake_host(settings: Settings, hypervisor: Hypervisor | None = None,
              faults: RaiseAt | None = None) -> Host:
    """A host over ``settings`` with the stand-ins plugged into every seam."""
    holder: list[Host] = []
    meter = ScriptedMeter(lambda: holder[0].hypervisor(), settings.memory_budget_mib)
    host = Host(settings, hypervisor=hypervisor, agents=StandInAgents(),  # type: ignore[arg-type]
                settler=IdleSettler(), faults=faults or RaiseAt(), meter=meter)
    holder.append(host)
    return host


def meter_of(host: Host) -> ScriptedMeter:
    meter = host.lifecycle.meter
    assert isinstance(meter, ScriptedMeter)
    return meter


def agents_of(host: Host) -> StandInAgents:
    agents = host.vms.agent
    assert isinstance(agents, StandInAgents)
    return agents


def settler_of(host: Host) -> IdleSettler:
    settler = host.swap.settler
    assert isinstance(settler, IdleSettler)
    return settler


__all__ = [
    "FaultInjected",
    "IdleSettler",
    "RaiseAt",
    "ScriptedMeter",
    "StandInAgent",
    "StandInAgents",
    "agents_of",
    "fake_host",
    "meter_of",
    "settler_of",
]


class PagedRam:
    """File-backed guest RAM as lifecycle sees it (the test driver has no QEMU process
    and no monitor): resident MiB per QEMU pid, emptied by a page-out; a save in place
    writes a stand-in device state and its QEMU 'waits' as a paused domain; a device
    state reading ``corrupt`` does not load."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resident: dict[int, int] = {}
        self.order: list[str] = []
        self.waiting: set[str] = set()
        monkeypatch.setattr(Hypervisor, "qemu_pid",
                            lambda _hv, name: 1000 + sum(map(ord, name)))
        monkeypatch.setattr(eviction, "resident_mib", lambda pid: self.resident.get(pid, 400))
        monkeypatch.setattr(eviction, "ram_mappings", lambda pid: [
            eviction.RamMapping(0, 512 << 20, Path(f"/ram/{pid}/guest.ram"))])
        monkeypatch.setattr(eviction, "page_out", self._page_out)
        for verb, fake in (("save_device_state", self._save),
                           ("start_waiting", self._start_waiting),
                           ("load_device_state", self._load)):
            monkeypatch.setattr(Hypervisor, verb, self._as_method(fake))
        monkeypatch.setattr(Hypervisor, "_waiting", lambda _hv, dom: dom.name() in self.waiting)
        stop = Hypervisor.stop

        def stop_and_forget(hv: Hypervisor, name: str, *args: object, **kwargs: object) -> bool:
            self.waiting.discard(name)
            return stop(hv, name, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Hypervisor, "stop", stop_and_forget)

    @staticmethod
    def _as_method(fake: Callable[..., None]) -> Callable[..., None]:
        """``fake(hv, ...)`` as a Hypervisor method (a bound method would not get ``hv``)."""
        return lambda hv, *args, **kwargs: fake(hv, *args, **kwargs)

    def _page_out(self, pid: int) -> eviction.Eviction:
        self.order.append("page_out")
        before, self.resident[pid] = self.resident.get(pid, 400), 0
        return eviction.Eviction(before, 0, 0.01)

    def _save(self, hv: Hypervisor, name: str, path: Path, timeout_s: float = 60) -> None:
        assert hv.state(name) is VMState.PAUSED  # the RAM file must hold still
        self.order.append("save_device_state")
        path.write_bytes(b"devices")

    def _start_waiting(self, hv: Hypervisor, name: str, domain_xml: str) -> None:
        assert domain_xml.count("defer") == 1
        self.order.append("start_waiting")
        dom = hv.conn.lookupByName(name)
        dom.create()
        dom.suspend()
        self.waiting.add(name)

    def _load(self, hv: Hypervisor, name: str, path: Path, timeout_s: float = 60) -> None:
        assert name in self.waiting
        self.order.append("load_device_state")
        self.waiting.discard(name)
        if path.read_bytes() == b"corrupt":
            raise HypervisorUnavailable(f"cannot restore '{name}': QEMU says load failed")
