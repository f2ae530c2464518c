"""``somnus collab`` and ``/collab`` over a scripted ``AgentHosts``: the CLI's foreground
run, ``--json``, listing, the transcript's exports, one-line refusals, the detached
start; the API's background run, its polling, its transcript and its event stream.

The host is the test driver's (tests/conftest.py); its ``collab`` service is rebuilt on a
scripted stand-in for the agent VMs, whose turns are the replies of a list.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from typer.testing import CliRunner

from core.types import Progress
from guest_agent.protocol.collab import CollabAction, TurnReply, TurnRequest
from orchestrator.collab.export import as_json, markdown
from orchestrator.collab.models import (
    CollabStatus,
    CollabView,
    EndReason,
    EntryKind,
    Placement,
    Transcript,
    TranscriptEntry,
)
from orchestrator.collab.service import CollabService
from orchestrator.collab.tables import CollabStore
from orchestrator.collab.team import team_from_names
from orchestrator.host import Host
from tests.unit.test_api import api, api_app, auth  # noqa: F401  (fixtures)
from tests.unit.test_api_schema import _validated

TASK = "Should the telemetry store move off SQLite?"


def say(text: str, *findings: str) -> TurnReply:
    return TurnReply(action=CollabAction.SAY, content=text,
                     findings=list(findings) or [f"noted: {text}"], prompt_tokens=50,
                     completion_tokens=20)


def final(text: str) -> TurnReply:
    return TurnReply(action=CollabAction.FINAL_ANSWER, content=text,
                     findings=["the decision"], prompt_tokens=60, completion_tokens=30)


def script() -> list[TurnReply]:
    """Three turns of researcher, analyst, synthesizer: the last one finishes."""
    return [say("Writes peak at 4000 rows per second in one writer.", "4000 rows/s peak"),
            say("WAL mode and batching lift that tenfold; retention is the real cost.",
                "batching lifts writes tenfold"),
            final("Stay on SQLite with WAL and batched inserts; revisit above 40k rows/s.")]


class FakeHosts:
    """``AgentHosts`` answering each turn with the next reply of ``replies``; ``gate``,
    when set, holds the last scripted turn until it is released."""

    policy = "single-active"

    def __init__(self, replies: list[TurnReply]) -> None:
        self.replies = list(replies)
        self.made: list[str] = []
        self.requests: list[tuple[str, TurnRequest]] = []
        self.gate: threading.Event | None = None

    def ensure(self, vm: str, progress: Progress | None) -> None:
        self.made.append(vm)

    def bring_up(self, vm: str, progress: Progress | None) -> str:
        if progress:
            progress(f"'{vm}' is in the foreground")
        return "already"

    def take(self, vm: str, request: TurnRequest) -> TurnReply:
        self.requests.append((vm, request))
        if len(self.replies) == 1 and self.gate is not None:
            assert self.gate.wait(20), "the test never released the last turn"
        if not self.replies:
            return say(f"nothing scripted for turn {request.turn}")
        return self.replies.pop(0)


@pytest.fixture
def hosts(host: Host, tmp_path: Path) -> FakeHosts:
    """``host.collab`` on a scripted stand-in (its turns: ``script()``)."""
    fake = FakeHosts(script())
    host.collab = CollabService(CollabStore(host.engine), fake, tmp_path / "collab")
    return fake


# -- the export ------------------------------------------------------------------------------


def _entry(seq: int, **fields: Any) -> TranscriptEntry:
    return TranscriptEntry(seq=seq, at=1_700_000_000.0 + seq, **fields)


def test_markdown_has_the_header_every_turn_with_its_costs_notes_and_the_final_answer(
        host: Host, hosts: FakeHosts) -> None:
    view = host.collab.create(TASK, team_from_names("researcher,synthesizer"))
    view = view.model_copy(update={
        "status": CollabStatus.COMPLETED, "end_reason": EndReason.FINAL_ANSWER, "turns": 2,
        "tokens": 1234, "elapsed_s": 12.34, "swap_s": 1.5, "final_answer": "Stay | put.",
        "vms": {"researcher": "agent-researcher", "synthesizer": "agent-synthesizer"}})
    entries = [
        _entry(1, kind=EntryKind.NOTE, content="the roles share *one* VM"),
        _entry(2, kind=EntryKind.TURN, role="researcher", vm="agent-researcher",
               action=CollabAction.SAY, content="Peak is 4000 rows/s.",
               findings=["4000 rows/s", "one writer"], prompt_tokens=120, completion_tokens=40,
               turn_s=3.4, swap_s=1.2, swap_path="resumed", strike="adds nothing new",
               fallback="the model gave no valid answer"),
        _entry(3, kind=EntryKind.TURN, role="synthesizer", vm="agent-synthesizer",
               action=CollabAction.FINAL_ANSWER, content="Stay | put.", prompt_tokens=1,
               completion_tokens=2),
    ]
    text = markdown(Transcript(collab=view, entries=entries))
    assert text.startswith(f"# {TASK}\n\n| | |\n|---|---|\n| Status | completed |\n")
    for row in ("| End reason | final_answer |", "| Tokens | 1,234 of 20,000 |",
                "| Time | 12.3 s |", "| Swap time | 1.5 s |",
                "| Placement | per-role (policy single-active) |",
                "| Roles | researcher → agent-researcher · synthesizer → agent-synthesizer |"):
        assert row in text
    assert "*the roles share \\*one\\* VM*" in text
    assert "### Turn 1 — researcher (agent-researcher)\n\nPeak is 4000 rows/s.\n" in text
    assert "- 4000 rows/s\n- one writer\n" in text
    assert "<small>tokens 120+40 · turn 3.4 s · swap 1.2 s (resumed)</small>" in text
    assert "**Strike:** adds nothing new" in text
    assert "**Fallback:** the model gave no valid answer" in text
    assert "### Turn 2 — synthesizer (agent-synthesizer)" in text
    assert text.index("## Final answer\n\nStay | put.") > text.index("### Turn 2")
    back = Transcript.model_validate_json(as_json(Transcript(collab=view, entries=entries)))
    assert back.model_dump() == Transcript(collab=view, entries=entries).model_dump()
    assert as_json(Transcript(collab=view, entries=[])).startswith('{\n  "collab": {')


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_host(host: Host, hosts: FakeHosts, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch, fresh_cli_host: None) -> Host:
    """The CLI's commands on ``host`` (and its scripted collab service)."""
    import cli.collab

    monkeypatch.setenv("SOMNUS_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setattr(cli.collab, "host", lambda: host)
    return host


def invoke(*args: str) -> Any:
    from cli import app

    return CliRunner().invoke(app, ["collab", *args])


def test_cli_start_runs_in_the_foreground_printing_turns_and_the_final_answer(
        cli_host: Host, hosts: FakeHosts) -> None:
    result = invoke("start", TASK, "--max-turns", "5", "--turn-tokens", "100")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "turn 1  researcher (agent-researcher)  [swap 0.0 s, turn 0.0 s, 70 tok]"
    assert lines[1] == "    Writes peak at 4000 rows per second in one writer."
    assert lines[2] == "    - 4000 rows/s peak"
    assert "turn 3  synthesizer (agent-synthesizer)  [" in result.stdout
    assert "· ended: final_answer" in result.stdout
    assert result.stdout.rstrip().endswith(
        "Final answer\nStay on SQLite with WAL and batched inserts; revisit above 40k rows/s.")
    assert "completed (final_answer) · 3 turns · 230 tokens" in result.stderr
    assert "turn 1: researcher (agent-researcher)" in result.stderr  # progress
    assert hosts.made == ["agent-researcher", "agent-analyst", "agent-synthesizer"]
    assert hosts.requests[0][1].max_tokens == 100
    (view,) = cli_host.collab.all()
    assert view.limits.max_turns == 5 and view.limits.turn_max_tokens == 100
    assert view.limits.budget_tokens == 20_000  # the model's default


def test_cli_json_is_the_final_view_alone_and_list_show_transcript_read_it(
        cli_host: Host, hosts: FakeHosts, tmp_path: Path) -> None:
    started = invoke("start", TASK, "--roles", "researcher,analyst,synthesizer",
                     "--shared-vm", "--json")
    assert started.exit_code == 0, started.output
    view = CollabView.model_validate_json(started.stdout)
    assert (view.status, view.end_reason, view.turns) == (
        CollabStatus.COMPLETED, EndReason.FINAL_ANSWER, 3)
    assert view.placement is Placement.SHARED and set(view.vms.values()) == {"agent-team"}
    assert started.stderr == ""

    listed = json.loads(invoke("list", "--json").stdout)
    assert [c["id"] for c in listed["collaborations"]] == [view.id]
    assert view.id in invoke("list").stdout
    shown = CollabView.model_validate_json(invoke("show", view.id, "--json").stdout)
    assert shown == view
    text = invoke("show", view.id).stdout
    assert f"{view.id} completed (final_answer)" in text and "3/6 turns" in text

    md = invoke("transcript", view.id, "--format", "md").stdout
    assert md.startswith(f"# {TASK}\n") and "### Turn 3 — synthesizer (agent-team)" in md
    as_json_text = invoke("transcript", view.id, "--format", "json").stdout
    transcript = Transcript.model_validate_json(as_json_text)
    assert [e.kind for e in transcript.entries].count(EntryKind.TURN) == 3
    target = tmp_path / "out.json"
    written = invoke("transcript", view.id, "-o", str(target))  # the suffix picks JSON
    assert written.exit_code == 0
    assert Transcript.model_validate_json(target.read_text()).collab.id == view.id
    (tmp_path / "dir").mkdir()
    assert invoke("transcript", view.id, "-o", str(tmp_path / "dir")).exit_code == 0
    assert (tmp_path / "dir" / f"{view.id}.md").read_text() == md
    followed = invoke("transcript", view.id, "--follow")
    assert followed.exit_code == 0 and followed.stdout.startswith("turn 1  researcher")
    assert "Final answer" in followed.stdout
    lines = invoke("transcript", view.id, "--follow", "--format", "json").stdout.splitlines()
    assert [TranscriptEntry.model_validate_json(line).seq for line in lines] == [1, 2, 3, 4]
    assert invoke("show", "c-00000000").exit_code != 0


def _main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          *args: str) -> tuple[int, list[str]]:
    """``somnus collab ARGS`` through the real entry point: exit code, stderr lines."""
    from cli import main

    monkeypatch.setattr(sys, "argv", ["somnus", "collab", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    code = exited.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err.strip().splitlines()


def test_cli_refusals_are_one_line(cli_host: Host, hosts: FakeHosts, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    team = tmp_path / "team.yaml"
    team.write_text("roles: [{name: lead}, {name: critic}]\n")
    assert _main(capsys, monkeypatch, "start", TASK, "--roles", "a,b", "--team", str(team)) == (
        2, ["error: --roles and --team exclude each other: give one of them"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("roles: [{name: lead, next: [nobody]}]\n")
    code, lines = _main(capsys, monkeypatch, "start", TASK, "--team", str(bad))
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: role 'lead': next 'nobody' is not one of the roles")
    code, lines = _main(capsys, monkeypatch, "start", TASK, "--team", str(tmp_path / "no.yaml"))
    assert (code, lines) == (2, [f"error: no team file {tmp_path / 'no.yaml'}"])
    code, lines = _main(capsys, monkeypatch, "start", TASK, "--max-turns", "0")
    assert code == 2 and len(lines) == 1
    assert lines == ["error: --max-turns 0: Input should be greater than or equal to 1"]
    code, lines = _main(capsys, monkeypatch, "start", TASK, "--roles",
                        ",".join(f"r{i}" for i in range(13)))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --roles: ")
    code, lines = _main(capsys, monkeypatch, "start", TASK, "--order", "graph")
    assert code == 2 and "needs a team file" in lines[0] and len(lines) == 1
    assert cli_host.collab.all() == [] and hosts.requests == []
    # A team file with --order: the option wins.
    result = invoke("start", TASK, "--team", str(team), "--order", "graph", "--json")
    assert result.exit_code == 0, result.output
    assert CollabView.model_validate_json(result.stdout).team.order.value == "graph"


def test_cli_detach_spawns_resume_in_a_new_session_and_cancel_ends_it(
        cli_host: Host, hosts: FakeHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.collab

    spawned: list[tuple[list[str], dict[str, Any]]] = []

    def popen(argv: list[str], **kw: Any) -> None:
        spawned.append((argv, kw))

    monkeypatch.setattr(cli.collab.subprocess, "Popen", popen)
    result = invoke("start", TASK, "--detach")
    assert result.exit_code == 0, result.output
    (view,) = cli_host.collab.all()
    assert f"'somnus collab transcript {view.id} --follow'" in result.stdout
    ((argv, kw),) = spawned
    assert argv[-3:] == ["collab", "resume", view.id] and kw["start_new_session"] is True
    log = cli_host.settings.home / "collab" / f"{view.id}.log"
    assert kw["stdout"].name == str(log) and log.exists()
    assert view.status is CollabStatus.PAUSED and hosts.requests == []

    # What the background process does: run it (never run before: no 'resumed' note).
    resumed = invoke("resume", view.id, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert CollabView.model_validate_json(resumed.stdout).status is CollabStatus.COMPLETED
    entries = cli_host.collab.transcript(view.id).entries
    assert entries[0].kind is EntryKind.TURN
    again = invoke("resume", view.id)
    assert "is complete (final_answer)" in str(again.exception)

    other = cli_host.collab.create(TASK, team_from_names("researcher,analyst"))
    cancelled = invoke("cancel", other.id, "--json")
    assert CollabView.model_validate_json(cancelled.stdout).status is CollabStatus.CANCELLED
    assert invoke("cancel", other.id).exit_code != 0  # already cancelled


# -- the API ---------------------------------------------------------------------------------


def _wait(api: TestClient, collab_id: str, timeout_s: float = 20) -> dict[str, Any]:  # noqa: F811
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view: dict[str, Any] = api.get(f"/collab/{collab_id}").json()
        if view["status"] in ("completed", "cancelled", "error"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"collaboration {collab_id} still running")


def _events(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


def test_api_starts_a_collaboration_in_the_background_and_serves_its_transcript(
        api: TestClient, hosts: FakeHosts, auth: dict[str, str]) -> None:  # noqa: F811
    started = api.post("/collab", json={"task": TASK, "roles": "researcher,analyst,synthesizer",
                                        "max_turns": 4.0, "budget_minutes": 5})
    assert started.status_code == 202, started.text
    view = started.json()
    assert started.headers["location"] == f"/collab/{view['id']}"
    assert view["status"] in ("active", "completed") and view["limits"]["max_turns"] == 4
    done = _wait(api, view["id"])
    assert (done["status"], done["end_reason"], done["turns"]) == ("completed", "final_answer", 3)
    assert done["final_answer"].startswith("Stay on SQLite")
    assert [c["id"] for c in api.get("/collab").json()["collaborations"]] == [view["id"]]

    md = api.get(f"/collab/{view['id']}/transcript", params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith(f"# {TASK}\n") and "## Final answer" in md.text
    transcript = Transcript.model_validate(
        api.get(f"/collab/{view['id']}/transcript").json())
    assert [e.seq for e in transcript.entries] == [1, 2, 3, 4]

    stream = api.get(f"/collab/{view['id']}/events")
    assert stream.headers["content-type"].startswith("text/event-stream")
    blocks = _events(stream.text)
    assert blocks[0].startswith("id: 1\ndata: ") and blocks[-1] == "data: [DONE]"
    assert [TranscriptEntry.model_validate_json(b.split("data: ", 1)[1]).seq
            for b in blocks[:-1]] == [1, 2, 3, 4]
    later = api.get(f"/collab/{view['id']}/events", params={"after": 2}).text
    assert later.startswith("id: 3\n")
    resumed = api.get(f"/collab/{view['id']}/events", headers={"Last-Event-ID": "3"}).text
    assert resumed.startswith("id: 4\n") and len(_events(resumed)) == 2
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app,
                                            config=SchemathesisConfig())
    replay = _validated(schema, auth, "/collab/{collab_id}/events", "GET",
                        path_parameters={"collab_id": view["id"]}, query={"after": 1})
    assert replay.startswith("id: 2\n") and replay.rstrip().endswith("data: [DONE]")

    again = api.post(f"/collab/{view['id']}/resume")
    assert again.status_code == 409 and "complete" in again.json()["detail"]
    assert api.post(f"/collab/{view['id']}/cancel").status_code == 409


def test_api_events_follow_a_running_collaboration(api: TestClient,  # noqa: F811
                                                   hosts: FakeHosts) -> None:
    hosts.gate = threading.Event()
    view = api.post("/collab", json={"task": TASK}).json()
    assert view["status"] == "active"  # answered once the run has taken it
    deadline = time.monotonic() + 10
    while len(hosts.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)  # the last turn is being taken (and held)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(
        api.get(f"/collab/{view['id']}/events").text))
    reader.start()
    time.sleep(0.3)
    assert api.get(f"/collab/{view['id']}").json()["status"] == "active"
    hosts.gate.set()
    reader.join(20)
    blocks = _events(got[0])
    assert [b.split("\n", 1)[0] for b in blocks[:-1]] == ["id: 1", "id: 2", "id: 3", "id: 4"]
    assert "final_answer" in blocks[2] and blocks[-1] == "data: [DONE]"
    assert _wait(api, view["id"])["status"] == "completed"


def test_api_refusals_cancel_and_resume(api: TestClient, host: Host,  # noqa: F811
                                        hosts: FakeHosts) -> None:
    both = api.post("/collab", json={"task": TASK, "roles": "researcher",
                                     "team": {"roles": [{"name": "lead"}]}})
    assert both.status_code == 409 and both.json()["detail"] == "give roles or team, not both"
    twice = api.post("/collab", json={"task": TASK, "roles": "analyst,analyst"})
    assert twice.status_code == 409 and "named twice" in twice.json()["detail"]
    graph = api.post("/collab", json={"task": TASK, "order": "graph"})
    assert graph.status_code == 409 and "needs a team" in graph.json()["detail"]
    assert api.post("/collab", json={"task": "   "}).status_code == 422
    assert api.post("/collab", json={"task": TASK, "roles": "Bad Name"}).status_code == 422
    assert api.post("/collab", json={"task": TASK, "max_turns": "3"}).status_code == 422
    assert api.post("/collab", json={"task": TASK, "team": {"roles": [
        {"name": "lead", "can_finish": 1}]}}).status_code == 422
    assert api.get("/collab/c-00000000").status_code == 404
    assert api.get("/collab/c-00000000/events").status_code == 404
    assert api.get("/collab/nope").status_code == 422
    assert api.get("/collab").json() == {"collaborations": []}

    made = host.collab.create(TASK, team_from_names("researcher,analyst"))
    hosts.replies = [say("Writes peak at 4000 rows per second."), final("Stay on SQLite.")]
    cancelled = api.post(f"/collab/{made.id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["end_reason"] == "cancelled"
    resumed = api.post(f"/collab/{made.id}/resume")
    assert resumed.status_code == 202 and resumed.json()["status"] in ("active", "completed")
    view = _wait(api, made.id)
    assert (view["status"], view["turns"], view["final_answer"]) == (
        "completed", 2, "Stay on SQLite.")
    notes = [e["content"] for e in api.get(f"/collab/{made.id}/transcript").json()["entries"]
             if e["kind"] == "note"]
    assert notes == ["ended: cancelled", "resumed", "ended: final_answer"]

    team = {"order": "graph", "moderator": "lead", "roles": [
        {"name": "lead", "prompt_role": "Synthesizer"}, {"name": "critic", "next": ["lead"]}]}
    graphed = api.post("/collab", json={"task": TASK, "team": team, "max_turns": 2})
    assert graphed.status_code == 202, graphed.text
    body = graphed.json()
    assert body["team"]["order"] == "graph" and body["team"]["roles"][0]["can_finish"]
    _wait(api, body["id"])
