"""Multi-agent collaborations as the CLI and the API offer them: the host runs the loop.

Each turn: the guards are checked; the next speaker is picked by rule
(``orchestrator.collab.turns``); its agent VM is brought to the foreground through the
swap engine (under ``single-active`` the others leave RAM; under ``budget`` those that
fit stay paused); the VM takes the turn (``POST /collab/turn``) with its inbox of
findings; the turn is appended to the transcript, and its findings are queued for the
other agent VMs, in one transaction. A ``final_answer`` or a guard ends the run and the
reason is recorded.

A run holds a lock file while it runs. A killed process releases it: the run then
shows as paused and ``resume`` takes it up at the turn it had not finished. A cancel
from another process is a flag the loop reads between turns.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from core.errors import Conflict, SomnusError
from core.types import Progress
from guest_agent.protocol import AgentStatus, PromptLayerName, Subsystem
from guest_agent.protocol.collab import (
    MAX_FINDING_CHARS,
    CollabAction,
    Finding,
    TranscriptLine,
    TurnReply,
    TurnRequest,
)
from orchestrator.collab.guards import GuardState
from orchestrator.collab.models import (
    FINISHED,
    CollabLimits,
    CollabStatus,
    CollabView,
    EndReason,
    EntryKind,
    Placement,
    Team,
    Transcript,
    TranscriptEntry,
)
from orchestrator.collab.tables import CollabRow, CollabStore
from orchestrator.collab.turns import allowed_actions, next_speaker
from orchestrator.locking import HomeLock
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService

log = logging.getLogger(__name__)

SHARED_VM = "agent-team"  # where every role runs when they share one VM
TRANSCRIPT_TAIL = 12  # earlier turns a turn is sent (its VM fits them to its context)
MODEL_WAIT_S = 600.0  # a VM just booted under TCG loads its model and memory index
FOLLOW_POLL_S = 0.5
LOCK_WAIT_S = 2.0


def new_collab_id() -> str:
    return f"c-{uuid.uuid4().hex[:8]}"


def role_vm(role: str) -> str:
    return f"agent-{role}"


class AgentHosts(Protocol):
    """Where turns are taken: the agent VMs (``AgentVMs``), or a scripted stand-in."""

    def ensure(self, vm: str, progress: Progress | None) -> None:
        """Make the agent VM if it does not exist (SomnusError when it cannot be)."""

    def bring_up(self, vm: str, progress: Progress | None) -> str:
        """Bring the VM to the foreground, its model loaded; how (the swap's path)."""

    def take(self, vm: str, request: TurnRequest) -> TurnReply: ...

    @property
    def policy(self) -> str: ...


class AgentVMs:
    """The real ``AgentHosts``: agent VMs made on demand, swapped in through the engine."""

    def __init__(self, vms: VMService, swap: SwapEngine) -> None:
        self.vms = vms
        self.swap = swap

    @property
    def policy(self) -> str:
        return self.vms.settings.policy.value

    def ensure(self, vm: str, progress: Progress | None) -> None:
        if self.vms.store.find_vm(vm) is None:
            if progress:
                progress(f"making the agent VM '{vm}'")
            self.vms.create(vm, Subsystem.AGENT, progress=progress)

    def bring_up(self, vm: str, progress: Progress | None) -> str:
        view = self.swap.activate(vm, progress)
        agent = self.vms.agent(self.vms.store.get_vm(vm))
        if agent.health().status is not AgentStatus.OK:
            if progress:
                progress(f"waiting for '{vm}' to load its model")
            agent.wait_model(MODEL_WAIT_S)
        return view.path

    def take(self, vm: str, request: TurnRequest) -> TurnReply:
        return self.vms.agent(self.vms.store.get_vm(vm)).collab_turn(request)


class CollabService:
    """Start, run, resume, cancel and read collaborations."""

    def __init__(self, store: CollabStore, hosts: AgentHosts, lock_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.hosts = hosts
        self.lock_dir = lock_dir
        self.clock = clock

    # -- reading ----------------------------------------------------------------------------

    def _lock(self, collab_id: str) -> HomeLock:
        return HomeLock(self.lock_dir / f"{collab_id}.lock")

    @contextmanager
    def _taken(self, collab_id: str) -> Iterator[bool]:
        """The run's lock, held for the block if it can be had within ``LOCK_WAIT_S``:
        a reader checking ``running`` holds it for an instant."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            with self._lock(collab_id)(wait=False) as mine:
                if mine or time.monotonic() >= deadline:
                    yield mine
                    return
            time.sleep(0.05)

    def running(self, collab_id: str) -> bool:
        """Whether some process runs the collaboration now (holds its lock)."""
        with self._lock(collab_id)(wait=False) as free:
            return not free

    def view(self, row: CollabRow, entries: list[TranscriptEntry] | None = None) -> CollabView:
        entries = self.store.entries(row.id) if entries is None else entries
        state = GuardState.of(entries)
        status = row.status
        if status is CollabStatus.ACTIVE and not self.running(row.id):
            status = CollabStatus.PAUSED  # its process died: resumable
        return CollabView(
            id=row.id, task=row.task, status=status, team=row.team, limits=row.limits,
            placement=row.placement, policy=row.policy, vms=json.loads(row.vms_json),
            turns=state.turns, tokens=state.tokens, strikes=state.strikes,
            elapsed_s=round(state.elapsed_s, 3),
            swap_s=round(sum(e.swap_s for e in entries), 3), end_reason=row.end_reason,
            final_answer=row.final_answer, error=row.error, created_at=row.created_at,
            updated_at=row.updated_at)

    def show(self, collab_id: str) -> CollabView:
        return self.view(self.store.get(collab_id))

    def all(self) -> list[CollabView]:
        return [self.view(row) for row in self.store.all()]

    def transcript(self, collab_id: str) -> Transcript:
        row = self.store.get(collab_id)
        entries = self.store.entries(collab_id)
        return Transcript(collab=self.view(row, entries), entries=entries)

    def follow(self, collab_id: str, after: int = 0, poll_s: float = FOLLOW_POLL_S
               ) -> Iterator[TranscriptEntry]:
        """Entries after ``after`` as they are appended, until the run stops (ends, or
        its process is gone)."""
        while True:
            row = self.store.get(collab_id)
            for entry in self.store.entries(collab_id, after):
                after = entry.seq
                yield entry
            if row.status in FINISHED or not self.running(collab_id):
                for entry in self.store.entries(collab_id, after):
                    yield entry  # what the run appended as it stopped
                return
            time.sleep(poll_s)

    # -- running ----------------------------------------------------------------------------

    def create(self, task: str, team: Team, limits: CollabLimits | None = None,
               placement: Placement = Placement.PER_ROLE) -> CollabView:
        """Record a new collaboration (it runs with ``run``)."""
        task = task.strip()
        if not task:
            raise Conflict("the task is empty: say what the agents should work on")
        now = time.time()
        row = self.store.add(CollabRow(
            id=new_collab_id(), task=task, status=CollabStatus.ACTIVE,
            team_json=team.model_dump_json(), limits_json=(limits or CollabLimits())
            .model_dump_json(), placement=placement, policy=self.hosts.policy,
            created_at=now, updated_at=now))
        return self.view(row, [])

    def resume(self, collab_id: str, progress: Progress | None = None,
               on_entry: Callable[[TranscriptEntry], None] | None = None) -> CollabView:
        """Take a paused, cancelled or failed run up again where it stopped."""
        row = self.store.get(collab_id)
        if row.status is CollabStatus.COMPLETED:
            raise Conflict(f"collaboration {collab_id} is complete ({row.end_reason}): "
                           "start a new one")
        return self.run(collab_id, progress, on_entry, resuming=True)

    def cancel(self, collab_id: str) -> CollabView:
        """Stop a run after its current turn; one that does not run is cancelled now."""
        row = self.store.get(collab_id)
        if row.status in FINISHED:
            raise Conflict(f"collaboration {collab_id} is already {row.status.value}")
        if self.running(collab_id):
            self.store.update(collab_id, cancel_requested=True)
        else:
            self._end(row, EndReason.CANCELLED)
        return self.show(collab_id)

    def run(self, collab_id: str, progress: Progress | None = None,
            on_entry: Callable[[TranscriptEntry], None] | None = None,
            resuming: bool = False) -> CollabView:
        """Run the collaboration until it ends (or this process is stopped)."""
        with self._taken(collab_id) as mine:
            if not mine:
                raise Conflict(f"collaboration {collab_id} is running in another process: "
                               f"'somnus collab transcript {collab_id} --follow' follows it")
            row = self.store.get(collab_id)
            if resuming:
                row = self.store.update(collab_id, status=CollabStatus.ACTIVE,
                                        cancel_requested=False, end_reason=None, error=None)
                self._note(row, "resumed", on_entry)
            try:
                self._loop(row, progress, on_entry)
            except SomnusError as exc:
                row = self.store.get(collab_id)
                self._end(row, EndReason.ERROR, error=str(exc), on_entry=on_entry)
            return self.show(collab_id)

    def _loop(self, row: CollabRow, progress: Progress | None,
              on_entry: Callable[[TranscriptEntry], None] | None) -> None:
        team, limits = row.team, row.limits
        vms = self._place(row, progress, on_entry)
        state = GuardState.of(self.store.entries(row.id))
        while True:
            row = self.store.get(row.id)
            if row.cancel_requested:
                self._end(row, EndReason.CANCELLED, on_entry=on_entry)
                return
            reason = state.exhausted(limits)
            if reason is not None:
                self._end(row, reason, on_entry=on_entry)
                return
            role = next_speaker(team, state.spoken)
            vm = vms[role]
            if progress:
                progress(f"turn {state.turns + 1}: {role} ({vm})")
            started = self.clock()
            path = self.hosts.bring_up(vm, progress)
            swap_s = self.clock() - started
            inbox = self.store.inbox(vm)
            request = TurnRequest(
                collab_id=row.id, turn=state.turns + 1, task=row.task, role=team.role(role),
                transcript=self._tail(row.id), inbox=[f for _, f in inbox],
                actions=allowed_actions(team, role),
                max_tokens=min(limits.turn_max_tokens,
                               max(8, limits.budget_tokens - state.tokens)))
            started = self.clock()
            reply = self.hosts.take(vm, request)
            turn_s = self.clock() - started
            entry = TranscriptEntry(
                seq=self.store.next_seq(row.id), kind=EntryKind.TURN, at=time.time(),
                role=role, vm=vm, action=reply.action, content=reply.content,
                findings=reply.findings, prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens, turn_s=round(turn_s, 3),
                swap_s=round(swap_s, 3), swap_path=path, fallback=reply.fallback,
                strike=state.strike(reply.content, reply.findings, reply.fallback),
                retrieved=reply.retrieved, identity=_identity(reply))
            send = [(other, Finding(collab_id=row.id, turn=request.turn, from_role=role,
                                    content=text[:MAX_FINDING_CHARS]))
                    for text in reply.findings for other in sorted(set(vms.values()))
                    if other != vm]
            self.store.append(row.id, entry, send, delivered=[i for i, _ in inbox])
            state.add(entry)
            if on_entry:
                on_entry(entry)
            if reply.action is CollabAction.FINAL_ANSWER and reply.action in request.actions:
                self._end(row, EndReason.FINAL_ANSWER, final=reply.content, on_entry=on_entry)
                return

    def _place(self, row: CollabRow, progress: Progress | None,
               on_entry: Callable[[TranscriptEntry], None] | None) -> dict[str, str]:
        """Each role's VM, made if need be; kept on the row so a resume uses the same.
        A role VM that cannot be made puts every role in one shared VM, and the
        transcript says so."""
        vms: dict[str, str] = json.loads(row.vms_json)
        roles = [r.name for r in row.team.roles]
        if set(vms) == set(roles):
            return vms
        if row.placement is Placement.PER_ROLE:
            try:
                for role in roles:
                    self.hosts.ensure(role_vm(role), progress)
                vms = {role: role_vm(role) for role in roles}
            except SomnusError as exc:
                self._note(row, f"the roles share the VM '{SHARED_VM}': an agent VM per role "
                                f"could not be made ({exc})", on_entry)
                vms = {}
        if not vms:
            self.hosts.ensure(SHARED_VM, progress)
            vms = {role: SHARED_VM for role in roles}
            if row.placement is Placement.PER_ROLE:
                self.store.update(row.id, placement=Placement.SHARED)
        self.store.update(row.id, vms_json=json.dumps(vms))
        return vms

    def _tail(self, collab_id: str) -> list[TranscriptLine]:
        turns = [e for e in self.store.entries(collab_id) if e.kind is EntryKind.TURN]
        return [TranscriptLine(turn=i, role=e.role or "?", content=e.content)
                for i, e in enumerate(turns, 1)][-TRANSCRIPT_TAIL:]

    def _note(self, row: CollabRow, text: str,
              on_entry: Callable[[TranscriptEntry], None] | None) -> None:
        entry = self.store.append(row.id, TranscriptEntry(
            seq=self.store.next_seq(row.id), kind=EntryKind.NOTE, at=time.time(),
            content=text))
        if on_entry:
            on_entry(entry)

    def _end(self, row: CollabRow, reason: EndReason, final: str | None = None,
             error: str | None = None,
             on_entry: Callable[[TranscriptEntry], None] | None = None) -> None:
        status = {EndReason.CANCELLED: CollabStatus.CANCELLED,
                  EndReason.ERROR: CollabStatus.ERROR}.get(reason, CollabStatus.COMPLETED)
        self._note(row, f"ended: {reason.value}" + (f" ({error})" if error else ""), on_entry)
        self.store.update(row.id, status=status, end_reason=reason, final_answer=final,
                          error=error, cancel_requested=False)


def _identity(reply: TurnReply) -> str | None:
    """The SYSTEM/IDENTITY layer's text from the turn's prompt report."""
    if reply.prompt is None:
        return None
    for layer in reply.prompt.layers:
        if layer.layer is PromptLayerName.SYSTEM_IDENTITY and layer.messages:
            return layer.messages[0].content
    return None
