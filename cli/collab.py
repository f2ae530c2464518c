"""``somnus collab``: multi-agent collaborations, each role an agent VM taking turns.

The host runs the loop: it picks who speaks by rule, brings that role's VM to the
foreground through the swap engine, and appends the turn to the transcript. A run in
the foreground prints each turn as it is taken; ``--detach`` leaves it to a background
process (``somnus collab resume ID``) whose output goes to ``<home>/collab/ID.log``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Column, Table

from cli.common import Clock, JsonFlag, emit_json, err, finish_run, host, out
from core.errors import InvalidInput
from orchestrator.collab.export import SUFFIX, TranscriptFormat, render, roles_line
from orchestrator.collab.models import (
    CollabLimits,
    CollabList,
    CollabStatus,
    CollabView,
    EntryKind,
    Placement,
    Team,
    TranscriptEntry,
    TurnOrder,
)
from orchestrator.collab.service import CollabService
from orchestrator.collab.team import DEFAULT_ROLES, checked, load_team, team_from_names

collab_app = typer.Typer(
    help="Collaborations: agents in their own VMs taking turns on one task, the host "
         "choosing who speaks and stopping the run at a final answer or a guard.\n\n"
         "For example:\n\n"
         "  somnus collab start \"Should we cache at the edge?\"\n\n"
         "  somnus collab start \"Plan a migration\" --roles researcher,analyst,synthesizer "
         "--max-turns 9\n\n"
         "  somnus collab start \"Review the design\" --team team.yaml --detach\n\n"
         "  somnus collab transcript c-1a2b3c4d --format md -o transcript.md",
    no_args_is_help=True)

_LIMITS = {name: field.default for name, field in CollabLimits.model_fields.items()}
IdArg = Annotated[str, typer.Argument(help="Collaboration id (see 'somnus collab list').")]


def collab() -> CollabService:
    return host().collab


def _out(text: str) -> None:
    """A line on stdout, as is: no highlighting, no wrapping (commands stay whole)."""
    out.print(text, highlight=False, soft_wrap=True)


def _err(text: str) -> None:
    err.print(text, highlight=False, soft_wrap=True)


# -- building a collaboration ----------------------------------------------------------------


# The option that sets each guard.
LIMIT_OPTIONS = {"max_turns": "--max-turns", "budget_tokens": "--budget-tokens",
                 "budget_minutes": "--budget-minutes", "max_strikes": "--max-strikes",
                 "turn_max_tokens": "--turn-tokens"}


def collab_limits(**fields: int | float | None) -> CollabLimits:
    """The guards from the options given (the model's defaults for the others); a bad
    value is one InvalidInput line naming its option."""
    try:
        return CollabLimits.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = LIMIT_OPTIONS.get(field, field or "limits")
        raise InvalidInput(f"{option} {fields.get(field)}: {first['msg']}") from None


def build_team(roles: str | None, team_file: Path | None, order: TurnOrder | None) -> Team:
    """The team from ``--roles`` or ``--team`` (not both); ``--order`` overrides a team
    file's."""
    if roles is not None and team_file is not None:
        raise InvalidInput("--roles and --team exclude each other: give one of them")
    if team_file is not None:
        team = load_team(team_file)
        if order is not None and order is not team.order:
            team = checked(team.model_copy(update={"order": order}))
        return team
    return team_from_names(roles if roles is not None else DEFAULT_ROLES,
                           order or TurnOrder.ROUND_ROBIN)


# -- following a run ---------------------------------------------------------------------------


class EntryPrinter:
    """Prints transcript entries as they are appended: a turn's header line and its
    content indented; a note as ``· note``. Turns are numbered from ``turns`` on."""

    def __init__(self, turns: int = 0) -> None:
        self.turns = turns

    def __call__(self, entry: TranscriptEntry) -> None:
        if entry.kind is not EntryKind.TURN:
            _out(f"[dim]· {escape(entry.content)}[/]")
            return
        self.turns += 1
        cost = (f"swap {entry.swap_s:.1f} s, turn {entry.turn_s:.1f} s, "
                f"{entry.tokens} tok")
        _out(f"[bold]turn {self.turns}[/]  {escape(entry.role or '?')} "
             f"({escape(entry.vm or '?')})  [dim]\\[{cost}][/]")
        for line in (entry.content.strip() or "(nothing said)").splitlines():
            _out(f"    {escape(line)}")
        for finding in entry.findings:
            _out(f"    [dim]- {escape(' '.join(finding.split()))}[/]")
        if entry.strike:
            _out(f"    [yellow]strike[/]: {escape(entry.strike)}")
        if entry.fallback:
            _out(f"    [yellow]fallback[/]: {escape(entry.fallback)}")


def print_outcome(view: CollabView) -> None:
    """How a run ended: the final answer on stdout, the tally and what next on stderr."""
    if view.final_answer is not None:
        out.print("\n[bold]Final answer[/]")
        _out(escape(view.final_answer.strip()))
    reason = f" ({view.end_reason.value})" if view.end_reason else ""
    _err(f"collaboration {view.id} is {view.status.value}{reason} · {view.turns} turns · "
         f"{view.tokens:,} tokens · {view.elapsed_s:.1f} s (swaps {view.swap_s:.1f} s)")
    if view.error:
        _err(f"[red]error[/]: {escape(view.error)}")
    if view.status is not CollabStatus.COMPLETED:
        _err(f"'somnus collab resume {view.id}' goes on where it stopped")
    _err(f"the transcript: 'somnus collab transcript {view.id}'")


def _finish(view: CollabView, as_json: bool) -> None:
    finish_run(view, as_json, print_outcome, failed=view.status is CollabStatus.ERROR)


def run_here(collab_id: str, as_json: bool,
             go: Callable[..., CollabView]) -> None:
    """Run (or resume) in this process, printing entries unless ``as_json``; Ctrl-C stops
    the run, which is then paused."""
    printer = None if as_json else EntryPrinter(collab().show(collab_id).turns)
    try:
        view = go(collab_id, progress=None if as_json else Clock(), on_entry=printer)
    except KeyboardInterrupt:
        _err(f"interrupted: collaboration {collab_id} is paused; 'somnus collab resume "
             f"{collab_id}' goes on")
        raise typer.Exit(130) from None
    _finish(view, as_json)


def somnus_command() -> list[str]:
    """How to start ``somnus`` again: the script beside this Python, the one this process
    was started as, the one on PATH, or the package through this Python."""
    beside = Path(sys.executable).with_name("somnus")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is not None and started.name == "somnus" and started.is_file():
        return [str(started.resolve())]
    found = shutil.which("somnus")
    if found:
        return [found]
    return [sys.executable, "-c", "from cli import main; main()"]


def detach(collab_id: str) -> Path:
    """Run the collaboration in a background process of its own; its log file."""
    log = host().settings.home / "collab" / f"{collab_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        subprocess.Popen([*somnus_command(), "collab", "resume", collab_id],
                         stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)
    return log


# -- commands ----------------------------------------------------------------------------------


@collab_app.command("start")
def collab_start(
    task: Annotated[str, typer.Argument(help="What the agents work on together.")],
    roles: Annotated[str | None, typer.Option(
        help=f"Comma-separated roles, each in its own agent VM (default: {DEFAULT_ROLES}); "
             "the last one gives the final answer.")] = None,
    team: Annotated[Path | None, typer.Option(
        "--team", help="A team file (YAML): roles with goals, constraints, 'next' and a "
                       "moderator.")] = None,
    order: Annotated[TurnOrder | None, typer.Option(
        help="Who speaks next: round-robin, or graph (each role's 'next'; needs --team). "
             "Overrides the team file's.")] = None,
    max_turns: Annotated[int | None, typer.Option(
        help=f"Turns at most (default {_LIMITS['max_turns']}).")] = None,
    budget_tokens: Annotated[int | None, typer.Option(
        help=f"Prompt + completion tokens of all turns (default "
             f"{_LIMITS['budget_tokens']}).")] = None,
    budget_minutes: Annotated[float | None, typer.Option(
        help=f"Turn and swap time (default {_LIMITS['budget_minutes']:g}).")] = None,
    max_strikes: Annotated[int | None, typer.Option(
        help="Turns of no progress (a repeat, nothing new, no valid answer) that end the run "
             f"(default {_LIMITS['max_strikes']}).")] = None,
    turn_tokens: Annotated[int | None, typer.Option(
        help=f"Tokens one turn may generate (default {_LIMITS['turn_max_tokens']}).")] = None,
    shared_vm: Annotated[bool, typer.Option(
        "--shared-vm", help="Every role in one agent VM instead of one VM each.")] = False,
    detached: Annotated[bool, typer.Option(
        "--detach", help="Run it in the background (follow: 'somnus collab transcript ID "
                         "--follow').")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a collaboration and run it here, printing each turn (progress on stderr).

    Examples:

      somnus collab start "Is SQLite enough for our telemetry?"

      somnus collab start "Design a backup plan" --roles researcher,fact-checker,synthesizer

      somnus collab start "Review the API" --team team.yaml --order graph --max-turns 10
    """
    chosen = build_team(roles, team, order)
    limits = collab_limits(max_turns=max_turns, budget_tokens=budget_tokens,
                           budget_minutes=budget_minutes, max_strikes=max_strikes,
                           turn_max_tokens=turn_tokens)
    svc = collab()
    view = svc.create(task, chosen, limits,
                      Placement.SHARED if shared_vm else Placement.PER_ROLE)
    if detached:
        log = detach(view.id)
        if as_json:
            emit_json(view)
        else:
            _out(f"collaboration {view.id} started in the background: 'somnus collab "
                 f"transcript {view.id} --follow' follows it")
            _err(f"its log: {log}")
        return
    if not as_json:
        _err(f"collaboration {view.id}: {', '.join(r.name for r in chosen.roles)} "
             f"({chosen.order.value}); Ctrl-C pauses it")
    run_here(view.id, as_json, svc.run)


@collab_app.command("resume")
def collab_resume(collab_id: IdArg, as_json: JsonFlag = False) -> None:
    """Go on with a stopped collaboration here, printing each turn.

    A paused, cancelled or failed collaboration goes on from the turn it had not
    finished; one never run (a --detach start) starts.
    """
    svc = collab()
    fresh = not svc.transcript(collab_id).entries
    run_here(collab_id, as_json, svc.run if fresh else svc.resume)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).astimezone().strftime("%Y-%m-%d %H:%M")


@collab_app.command("list")
def collab_list(as_json: JsonFlag = False) -> None:
    """List collaborations, newest first."""
    views = collab().all()
    if as_json:
        emit_json(CollabList(collaborations=views))
        return
    table = Table(Column("ID", no_wrap=True), "STATUS", "TURNS", "TOKENS", "ROLES", "UPDATED",
                  "TASK")
    for v in views:
        task = " ".join(v.task.split())
        table.add_row(v.id, v.status.value + (f" ({v.end_reason.value})" if v.end_reason
                                              else ""),
                      str(v.turns), f"{v.tokens:,}", ",".join(r.name for r in v.team.roles),
                      _when(v.updated_at), escape(task if len(task) <= 60 else task[:57] + "..."))
    out.print(table if views else "no collaborations yet: 'somnus collab start \"TASK\"'")


@collab_app.command("show")
def collab_show(collab_id: IdArg, as_json: JsonFlag = False) -> None:
    """A collaboration's status, team, guards and tally."""
    v = collab().show(collab_id)
    if as_json:
        emit_json(v)
        return
    reason = f" ({v.end_reason.value})" if v.end_reason else ""
    _out(f"[bold]{v.id}[/] {v.status.value}{reason}: {escape(v.task)}")
    _out(f"  roles: {escape(roles_line(v))}")
    moderator = f", moderator {v.team.moderator}" if v.team.moderator else ""
    _out(f"  {v.team.order.value} order{moderator}; {v.placement.value} placement under the "
         f"{v.policy} policy")
    lim = v.limits
    _out(f"  {v.turns}/{lim.max_turns} turns, {v.tokens:,}/{lim.budget_tokens:,} tokens, "
         f"{v.strikes}/{lim.max_strikes} strikes, {v.elapsed_s:.1f} s of "
         f"{lim.budget_minutes:g} min (swaps {v.swap_s:.1f} s)")
    if v.error:
        _out(f"  [red]error[/]: {escape(v.error)}")
    if v.final_answer is not None:
        _out("  final answer:")
        for line in v.final_answer.strip().splitlines():
            _out(f"    {escape(line)}")


def transcript_format(fmt: TranscriptFormat | None, output: Path | None) -> TranscriptFormat:
    """The format asked for; without one, the output file's suffix decides (md by
    default)."""
    if fmt is not None:
        return fmt
    suffix = output.suffix.lower() if output is not None else ""
    return TranscriptFormat.JSON if suffix == ".json" else TranscriptFormat.MARKDOWN


@collab_app.command("transcript")
def collab_transcript(
    collab_id: IdArg,
    fmt: Annotated[TranscriptFormat | None, typer.Option(
        "--format", help="md or json (default: from --output's suffix, else md).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Write it here instead of stdout.")]
    = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Print the entries as they are appended until the run stops "
                               "(JSON lines with --format json).")] = False,
) -> None:
    """A collaboration's transcript: turns, findings, costs, notes, the final answer.

    Example: somnus collab transcript c-1a2b3c4d --format md -o transcript.md
    """
    svc = collab()
    if follow:
        if output is not None:
            raise InvalidInput("--follow prints to the terminal: leave out -o")
        _follow(svc, collab_id, fmt is TranscriptFormat.JSON)
        return
    chosen = transcript_format(fmt, output)
    text = render(svc.transcript(collab_id), chosen)
    if output is None:
        sys.stdout.write(text)  # as is: no markup or wrapping of the console
        sys.stdout.flush()
        return
    if output.is_dir():
        output = output / f"{collab_id}{SUFFIX[chosen]}"
    output.write_text(text)
    _err(f"transcript of {collab_id} written to {output}")


def _follow(svc: CollabService, collab_id: str, json_lines: bool) -> None:
    """Every entry, then those appended as they come, until the run stops; Ctrl-C stops
    following, not the run."""
    printer = EntryPrinter()
    try:
        for entry in svc.follow(collab_id):
            if json_lines:
                sys.stdout.write(entry.model_dump_json() + "\n")
                sys.stdout.flush()
            else:
                printer(entry)
    except KeyboardInterrupt:
        _err(f"stopped following; 'somnus collab transcript {collab_id} --follow' "
             "takes it up again")
        raise typer.Exit(130) from None
    view = svc.show(collab_id)
    if json_lines:
        return
    if view.status is CollabStatus.PAUSED:
        _err(f"collaboration {collab_id} is not running: 'somnus collab resume "
             f"{collab_id}' goes on")
        return
    print_outcome(view)


@collab_app.command("cancel")
def collab_cancel(collab_id: IdArg, as_json: JsonFlag = False) -> None:
    """Stop a collaboration after its current turn ('resume' goes on from there)."""
    view = collab().cancel(collab_id)
    if as_json:
        emit_json(view)
    elif view.status is CollabStatus.CANCELLED:
        _out(f"collaboration {collab_id} is cancelled")
    else:
        _out(f"collaboration {collab_id} stops after its current turn")

