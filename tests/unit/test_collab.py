"""Multi-agent collaboration on the host: teams, turn order, the guards, resuming a
killed run, findings travelling between agents' inboxes, the shared-VM fallback; and the
guest's turns with the real SmolLM2 and real memory (roles stable, findings retrieved).

The host's loop is driven by a scripted ``AgentHosts`` (answers chosen per turn); the
real-model tests run the guest's ``POST /collab/turn`` in-process on the host, two agent
apps with their own memory standing in for two agent VMs (tests/vm/test_collab.py does
the same across real VMs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.errors import Conflict, InsufficientResources, InvalidInput
from core.types import Progress
from guest_agent.protocol import PromptLayerName, Subsystem
from guest_agent.protocol.collab import AgentRole, CollabAction, TurnReply, TurnRequest
from orchestrator.collab.guards import GuardState
from orchestrator.collab.models import (
    CollabLimits,
    CollabStatus,
    EndReason,
    EntryKind,
    Placement,
    Team,
    TranscriptEntry,
    TurnOrder,
)
from orchestrator.collab.service import SHARED_VM, CollabService
from orchestrator.collab.tables import CollabStore
from orchestrator.collab.team import load_team, team_from_names
from orchestrator.collab.turns import allowed_actions, next_speaker
from orchestrator.database import open_database
from tests.unit.conftest import AUTH, ClientFactory

Answer = Callable[[str, TurnRequest], TurnReply]


class ScriptedHosts:
    """``AgentHosts`` whose turns are answered by ``answer(vm, request)``."""

    policy = "single-active"

    def __init__(self, answer: Answer, cannot_make: frozenset[str] = frozenset()) -> None:
        self.answer = answer
        self.cannot_make = cannot_make
        self.made: list[str] = []
        self.up: list[str] = []
        self.requests: list[tuple[str, TurnRequest]] = []

    def ensure(self, vm: str, progress: Progress | None) -> None:
        if vm in self.cannot_make:
            raise InsufficientResources(f"'{vm}' does not fit")
        self.made.append(vm)

    def bring_up(self, vm: str, progress: Progress | None) -> str:
        self.up.append(vm)
        return "resumed"

    def take(self, vm: str, request: TurnRequest) -> TurnReply:
        self.requests.append((vm, request))
        return self.answer(vm, request)


def say(text: str, *findings: str, tokens: int = 10) -> TurnReply:
    return TurnReply(action=CollabAction.SAY, content=text,
                     findings=list(findings) or [f"finding of: {text}"],
                     prompt_tokens=tokens, completion_tokens=tokens)


def fresh(request: TurnRequest) -> TurnReply:
    """A turn that always adds something new."""
    return say(f"turn {request.turn} point{request.turn} by {request.role.name}")


def service(tmp_path: Path, hosts: ScriptedHosts) -> CollabService:
    return CollabService(CollabStore(open_database(tmp_path / "somnus.db")), hosts,
                         tmp_path / "collab")


TWO = team_from_names("researcher,analyst")


# -- teams and turn order ---------------------------------------------------------------------

def test_roles_from_names_speak_as_the_builtin_prompt_roles_and_the_last_one_finishes() -> None:
    team = team_from_names("researcher, Analyst,synthesizer")
    assert [(r.name, r.prompt_role) for r in team.roles] == [
        ("researcher", "Researcher"), ("analyst", "Analyst"), ("synthesizer", "Synthesizer")]
    assert [r.can_finish for r in team.roles] == [False, False, True]
    assert allowed_actions(team, "synthesizer") == [CollabAction.SAY, CollabAction.FINAL_ANSWER]
    assert allowed_actions(team, "researcher") == [CollabAction.SAY]


@pytest.mark.parametrize(("names", "message"), [
    ("", "--roles names no role"),
    ("researcher,Bad_Name", "role name 'bad_name'"),
    ("researcher,researcher", "role 'researcher' is named twice"),
])
def test_bad_role_names_are_one_line_errors(names: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        team_from_names(names)
    assert "\n" not in str(caught.value)


def test_a_team_file_declares_goals_a_graph_and_a_moderator(tmp_path: Path) -> None:
    path = tmp_path / "team.yaml"
    path.write_text("""
order: graph
moderator: lead
roles:
  - name: lead
    prompt_role: Synthesizer
  - name: researcher
    goal: find the facts
    next: [critic]
  - name: critic
    prompt_role: Analyst
    constraints: [name one weakness]
    next: [researcher]
""")
    team = load_team(path)
    assert team.order is TurnOrder.GRAPH and team.moderator == "lead"
    assert team.role("researcher").prompt_role == "Researcher"
    assert team.role("lead").can_finish and not team.role("critic").can_finish
    spoken: list[str] = []
    for _ in range(6):
        spoken.append(next_speaker(team, spoken))
    assert spoken == ["lead", "researcher", "lead", "critic", "lead", "researcher"]


@pytest.mark.parametrize(("body", "message"), [
    ("roles: [{name: a, next: [zed]}]", "next 'zed' is not one of the roles"),
    ("moderator: boss\nroles: [{name: a}]", "moderator 'boss' is not one of the roles"),
    ("roles: [{name: a, max_tokens: 3}]", "roles.0.max_tokens: Extra inputs"),
    ("roles: {a: 1}", "needs a 'roles' list"),
    ("roles: [", "team file"),
])
def test_a_bad_team_file_is_one_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "team.yaml"
    path.write_text(body)
    with pytest.raises(InvalidInput, match=message) as caught:
        load_team(path)
    assert "\n" not in str(caught.value)


def test_a_missing_team_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no team file .*nope\.yaml"):
        load_team(tmp_path / "nope.yaml")


def test_graph_order_picks_the_allowed_role_that_waited_longest() -> None:
    team = Team(order=TurnOrder.GRAPH, roles=[
        AgentRole(name="a", prompt_role="Researcher", next=["b", "c"]),
        AgentRole(name="b", prompt_role="Analyst", next=["a"]),
        AgentRole(name="c", prompt_role="Analyst", next=["a"])])
    spoken: list[str] = []
    for _ in range(6):
        spoken.append(next_speaker(team, spoken))
    assert spoken == ["a", "b", "a", "c", "a", "b"]


# -- the guards -----------------------------------------------------------------------------

def test_no_progress_strikes_repeats_and_turns_that_add_nothing() -> None:
    state = GuardState()
    first = TranscriptEntry(seq=1, kind=EntryKind.TURN, at=0, role="a",
                            content="Threads share the GIL.", findings=["the GIL"])
    assert state.strike(first.content, first.findings, None) is None
    state.add(first)
    assert state.strike("threads share the gil", [], None) == "repeats turn 1"
    assert state.strike("I agree: the GIL, threads!", ["threads share"], None) == \
        "adds nothing new"
    assert state.strike("Processes avoid it.", [], None) is None
    assert state.strike("anything", [], "no valid answer") == "the model gave no valid answer"


def test_a_model_that_repeats_itself_is_stopped_by_the_no_progress_guard(
        tmp_path: Path) -> None:
    hosts = ScriptedHosts(lambda vm, r: say("We should look into it.", "look into it"))
    collab = service(tmp_path, hosts)
    view = collab.create("Why is Python slow?", TWO, CollabLimits(max_turns=50, max_strikes=2))
    done = collab.run(view.id)
    assert done.status is CollabStatus.COMPLETED and done.end_reason is EndReason.NO_PROGRESS
    turns = [e for e in collab.transcript(view.id).entries if e.kind is EntryKind.TURN]
    assert [e.strike for e in turns] == [None, "repeats turn 1", "repeats turn 1"]
    assert done.turns == 3 and done.strikes == 2


def test_a_model_that_never_finishes_is_stopped_at_max_turns(tmp_path: Path) -> None:
    hosts = ScriptedHosts(lambda vm, r: fresh(r))
    collab = service(tmp_path, hosts)
    view = collab.create("task", TWO, CollabLimits(max_turns=5))
    done = collab.run(view.id)
    assert done.end_reason is EndReason.MAX_TURNS and done.turns == 5 and done.strikes == 0
    assert [vm for vm, _ in hosts.requests] == ["agent-researcher", "agent-analyst"] * 2 + [
        "agent-researcher"]
    notes = [e.content for e in collab.transcript(view.id).entries if e.kind is EntryKind.NOTE]
    assert notes == ["ended: max_turns"]


def test_the_token_budget_ends_the_run_and_caps_each_turn(tmp_path: Path) -> None:
    hosts = ScriptedHosts(lambda vm, r: say(f"new {r.turn} words{r.turn}", tokens=150))
    collab = service(tmp_path, hosts)
    view = collab.create("task", TWO, CollabLimits(budget_tokens=700, turn_max_tokens=200))
    done = collab.run(view.id)
    assert done.end_reason is EndReason.TOKEN_BUDGET and done.tokens == 900
    assert [r.max_tokens for _, r in hosts.requests] == [200, 200, 100]


def test_the_time_budget_counts_swaps_and_turns(tmp_path: Path) -> None:
    ticks = iter(range(0, 10_000, 20))  # every clock reading is 20 s later
    hosts = ScriptedHosts(lambda vm, r: fresh(r))
    collab = CollabService(CollabStore(open_database(tmp_path / "somnus.db")), hosts,
                           tmp_path / "collab", clock=lambda: float(next(ticks)))
    view = collab.create("task", TWO, CollabLimits(budget_minutes=1))
    done = collab.run(view.id)
    assert done.end_reason is EndReason.TIME_BUDGET and done.turns == 2
    assert done.elapsed_s == 80 and done.swap_s == 40


def test_a_final_answer_is_a_structured_action_of_a_role_allowed_to_finish(
        tmp_path: Path) -> None:
    def answer(vm: str, request: TurnRequest) -> TurnReply:
        if CollabAction.FINAL_ANSWER in request.actions:
            return TurnReply(action=CollabAction.FINAL_ANSWER, content="Use processes.",
                             findings=["processes sidestep the GIL"])
        return say("TERMINATE. The answer is final.")  # a magic word is just words
    collab = service(tmp_path, ScriptedHosts(answer))
    done = collab.run(collab.create("task", TWO).id)
    assert done.end_reason is EndReason.FINAL_ANSWER and done.final_answer == "Use processes."
    assert done.turns == 2


# -- shared memory ----------------------------------------------------------------------------

def test_findings_reach_the_other_agents_inboxes_once(tmp_path: Path) -> None:
    hosts = ScriptedHosts(lambda vm, r: say(f"turn {r.turn} x{r.turn}",
                                            f"fact {r.turn} from {r.role.name}"))
    collab = service(tmp_path, hosts)
    team = team_from_names("researcher,analyst,synthesizer")
    collab.run(collab.create("task", team, CollabLimits(max_turns=4)).id)
    inboxes = [(vm, [f.content for f in r.inbox]) for vm, r in hosts.requests]
    assert inboxes == [
        ("agent-researcher", []),
        ("agent-analyst", ["fact 1 from researcher"]),
        ("agent-synthesizer", ["fact 1 from researcher", "fact 2 from analyst"]),
        ("agent-researcher", ["fact 2 from analyst", "fact 3 from synthesizer"]),
    ]
    # What was not delivered yet waits for the agent's next turn, in a later run too.
    assert [f.content for _, f in collab.store.inbox("agent-analyst")] == [
        "fact 3 from synthesizer", "fact 4 from researcher"]
    assert [line.role for line in hosts.requests[-1][1].transcript] == [
        "researcher", "analyst", "synthesizer"]


def test_roles_share_one_vm_when_their_vms_cannot_be_made(tmp_path: Path) -> None:
    hosts = ScriptedHosts(lambda vm, r: fresh(r), cannot_make=frozenset({"agent-analyst"}))
    collab = service(tmp_path, hosts)
    done = collab.run(collab.create("task", TWO, CollabLimits(max_turns=2)).id)
    assert done.placement is Placement.SHARED
    assert done.vms == {"researcher": SHARED_VM, "analyst": SHARED_VM}
    assert {vm for vm, _ in hosts.requests} == {SHARED_VM}
    first = collab.transcript(done.id).entries[0]
    assert first.kind is EntryKind.NOTE and "share the VM 'agent-team'" in first.content
    assert "'agent-analyst' does not fit" in first.content
    assert all(not r.inbox for _, r in hosts.requests)  # one VM: nobody else to tell


# -- stopping and resuming ------------------------------------------------------------------

class Killed(BaseException):
    """Stands for the orchestrator's process dying mid-turn."""


def test_a_collaboration_killed_mid_turn_resumes_at_that_turn(tmp_path: Path) -> None:
    kill_at = {3}

    def answer(vm: str, request: TurnRequest) -> TurnReply:
        if request.turn in kill_at:
            kill_at.clear()
            raise Killed
        return fresh(request)
    hosts = ScriptedHosts(answer)
    collab = service(tmp_path, hosts)
    view = collab.create("task", TWO, CollabLimits(max_turns=4))
    with pytest.raises(Killed):
        collab.run(view.id)
    paused = collab.show(view.id)
    assert paused.status is CollabStatus.PAUSED and paused.turns == 2
    # A new process: the same database and lock directory.
    again = service(tmp_path, ScriptedHosts(answer))
    done = again.resume(view.id)
    assert done.status is CollabStatus.COMPLETED and done.end_reason is EndReason.MAX_TURNS
    entries = again.transcript(view.id).entries
    assert [(e.kind.value, e.role) for e in entries] == [
        ("turn", "researcher"), ("turn", "analyst"), ("note", None), ("turn", "researcher"),
        ("turn", "analyst"), ("note", None)]
    assert entries[2].content == "resumed" and [e.seq for e in entries] == list(range(1, 7))
    assert again.hosts.made == []  # type: ignore[attr-defined]  # placed once, kept on the row


def run_until_killed(root: str, collab_id: str, kill_at: int) -> None:
    """In a child process: run the collaboration and die by SIGKILL in turn ``kill_at``."""
    def answer(vm: str, request: TurnRequest) -> TurnReply:
        if request.turn == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fresh(request)
    service(Path(root), ScriptedHosts(answer)).run(collab_id)


def test_a_process_killed_mid_turn_leaves_a_resumable_run(tmp_path: Path) -> None:
    collab = service(tmp_path, ScriptedHosts(lambda vm, r: fresh(r)))
    view = collab.create("task", TWO, CollabLimits(max_turns=5))
    child = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.unit.test_collab import "
         "run_until_killed as r; r(sys.argv[1], sys.argv[2], 4)", str(tmp_path), view.id],
        cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    paused = collab.show(view.id)  # the lock went with the process; three turns stayed
    assert paused.status is CollabStatus.PAUSED and paused.turns == 3
    done = collab.resume(view.id)
    assert done.turns == 5 and done.end_reason is EndReason.MAX_TURNS


def test_a_running_collaboration_cannot_be_run_twice_and_cancels_after_its_turn(
        tmp_path: Path) -> None:
    holder: list[CollabService] = []

    def answer(vm: str, request: TurnRequest) -> TurnReply:
        collab = holder[0]
        if request.turn == 2:
            with pytest.raises(Conflict, match="running in another process"):
                collab.run(request.collab_id)
            assert collab.show(request.collab_id).status is CollabStatus.ACTIVE
            assert collab.cancel(request.collab_id).status is CollabStatus.ACTIVE
        return fresh(request)
    holder.append(service(tmp_path, ScriptedHosts(answer)))
    collab = holder[0]
    done = collab.run(collab.create("task", TWO, CollabLimits(max_turns=9)).id)
    assert done.status is CollabStatus.CANCELLED and done.turns == 2
    with pytest.raises(Conflict, match="already cancelled"):
        collab.cancel(done.id)


def test_a_completed_collaboration_is_not_resumed(tmp_path: Path) -> None:
    collab = service(tmp_path, ScriptedHosts(lambda vm, r: fresh(r)))
    done = collab.run(collab.create("task", TWO, CollabLimits(max_turns=1)).id)
    with pytest.raises(Conflict, match="is complete"):
        collab.resume(done.id)


def test_a_turn_that_fails_ends_the_run_in_error_and_resume_goes_on(tmp_path: Path) -> None:
    fail = {2}

    def answer(vm: str, request: TurnRequest) -> TurnReply:
        if request.turn in fail:
            fail.clear()
            raise InsufficientResources("the budget is full")
        return fresh(request)
    collab = service(tmp_path, ScriptedHosts(answer))
    view = collab.create("task", TWO, CollabLimits(max_turns=3))
    failed = collab.run(view.id)
    assert failed.status is CollabStatus.ERROR and failed.error == "the budget is full"
    assert collab.resume(view.id).end_reason is EndReason.MAX_TURNS


# -- the guest's turns with the real model -------------------------------------------------

class InProcessAgents:
    """``AgentHosts`` over real agent apps (real model, real memory), one per VM name."""

    policy = "single-active"

    def __init__(self, make: ClientFactory, root: Path) -> None:
        self.make, self.root = make, root
        self.clients: dict[str, TestClient] = {}

    def ensure(self, vm: str, progress: Progress | None) -> None:
        if vm not in self.clients:
            self.clients[vm] = self.make(Subsystem.AGENT, data_dir=self.root / vm)[0]

    def bring_up(self, vm: str, progress: Progress | None) -> str:
        return "already"

    def take(self, vm: str, request: TurnRequest) -> TurnReply:
        response = self.clients[vm].post("/collab/turn", json=request.model_dump(mode="json"),
                                         headers=AUTH)
        assert response.status_code == 200, response.text
        return TurnReply.model_validate(response.json())


def test_real_model_roles_stay_stable_and_findings_cross_agents(
        tmp_path: Path, make_agent_client: ClientFactory) -> None:
    agents = InProcessAgents(make_agent_client, tmp_path)
    collab = service(tmp_path, agents)  # type: ignore[arg-type]
    view = collab.create("Why do Python threads not speed up CPU-bound code?", TWO,
                         CollabLimits(max_turns=4, turn_max_tokens=128, max_strikes=4))
    done = collab.run(view.id)
    assert done.status is CollabStatus.COMPLETED, done
    turns = [e for e in collab.transcript(view.id).entries if e.kind is EntryKind.TURN]
    assert len(turns) == done.turns >= 2
    for entry in turns:
        # Each turn's prompt report carries its own role's identity, turn after turn.
        role = "Researcher" if entry.role == "researcher" else "Analyst"
        assert entry.identity is not None
        assert entry.identity.startswith(f"You are the {role}, a role of the Somnus"), entry
        assert f"you remain the {role}" in entry.identity
        assert entry.prompt_tokens > 0 and entry.findings and entry.fallback is None
    # The analyst's VM retrieves what the researcher published, from its own memory.
    first, second = turns[0], turns[1]
    assert second.vm == "agent-analyst"
    assert any(f in text for f in first.findings for text in second.retrieved), second


def test_real_model_turn_reports_layers_and_refuses_a_role_the_vm_lacks(
        make_agent_client: ClientFactory, tmp_path: Path) -> None:
    client = make_agent_client(Subsystem.AGENT, data_dir=tmp_path / "a")[0]
    request = TurnRequest(collab_id="c-0000abcd", turn=1, task="Name one use of Python.",
                          role=AgentRole(name="critic", prompt_role="Analyst",
                                         goal="find one weakness"), max_tokens=40,
                          actions=[CollabAction.SAY, CollabAction.FINAL_ANSWER])
    response = client.post("/collab/turn", json=request.model_dump(mode="json"), headers=AUTH)
    assert response.status_code == 200, response.text
    reply = TurnReply.model_validate(response.json())
    # The grammar sizes the strings to max_tokens: even 40 tokens hold a whole answer.
    assert reply.fallback is None and reply.attempts == 1 and reply.completion_tokens <= 40
    assert reply.action in (CollabAction.SAY, CollabAction.FINAL_ANSWER) and reply.findings
    assert reply.prompt is not None and reply.prompt.role == "Analyst"
    system = next(layer for layer in reply.prompt.layers
                  if layer.layer is PromptLayerName.SYSTEM_IDENTITY)
    assert "find one weakness" in system.messages[0].content  # the team's goal joins it
    bad = request.model_copy(update={"role": request.role.model_copy(
        update={"prompt_role": "Pirate"})})
    refused = client.post("/collab/turn", json=bad.model_dump(mode="json"), headers=AUTH)
    assert refused.status_code == 404 and "unknown role 'Pirate'" in refused.text


def test_turns_are_refused_outside_agent_vms(make_agent_client: ClientFactory) -> None:
    client = make_agent_client(Subsystem.CHAT)[0]
    request = TurnRequest(collab_id="c-0000abcd", turn=1, task="t",
                          role=AgentRole(name="a", prompt_role="Analyst"))
    response = client.post("/collab/turn", json=request.model_dump(mode="json"), headers=AUTH)
    assert response.status_code == 409 and "agent VMs" in response.text
