"""A collaboration's transcript as Markdown or JSON.

The Markdown opens with the task and a table of how the run went (status, end reason,
turns, tokens, time, swap time, placement and policy, each role's VM); then every entry
in order: a turn with its content, its findings and what it cost (tokens, the agent's
time, the swap that brought its VM up), its strike or fallback when it had one; a note
of the host's in italics. The final answer closes it in a section of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from orchestrator.collab.models import CollabView, EntryKind, Transcript, TranscriptEntry


class TranscriptFormat(StrEnum):
    MARKDOWN = "md"
    JSON = "json"


SUFFIX = {TranscriptFormat.MARKDOWN: ".md", TranscriptFormat.JSON: ".json"}
MEDIA_TYPE = {TranscriptFormat.MARKDOWN: "text/markdown",
              TranscriptFormat.JSON: "application/json"}


def render(t: Transcript, fmt: TranscriptFormat) -> str:
    return as_json(t) if fmt is TranscriptFormat.JSON else markdown(t)


def as_json(t: Transcript) -> str:
    """The transcript model itself, indented."""
    return t.model_dump_json(indent=2) + "\n"


def one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text fit for a Markdown table cell: one line, pipes escaped."""
    return one_line(text).replace("|", "\\|")


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def roles_line(view: CollabView) -> str:
    """``researcher → agent-researcher · analyst → …`` (before placement: not placed)."""
    return " · ".join(f"{r.name} → {view.vms.get(r.name, 'not placed yet')}"
                      for r in view.team.roles)


def cost_line(entry: TranscriptEntry) -> str:
    """``tokens P+C · turn X s · swap Y s (path)``."""
    path = f" ({entry.swap_path})" if entry.swap_path else ""
    return (f"tokens {entry.prompt_tokens}+{entry.completion_tokens} · turn {entry.turn_s:.1f} s"
            f" · swap {entry.swap_s:.1f} s{path}")


def _header(view: CollabView) -> list[str]:
    rows = [("Status", view.status.value),
            ("End reason", view.end_reason.value if view.end_reason else "—"),
            ("Turns", f"{view.turns} of at most {view.limits.max_turns}"),
            ("Tokens", f"{view.tokens:,} of {view.limits.budget_tokens:,}"),
            ("Time", f"{view.elapsed_s:.1f} s"),
            ("Swap time", f"{view.swap_s:.1f} s"),
            ("Strikes", f"{view.strikes} of {view.limits.max_strikes}"),
            ("Placement", f"{view.placement.value} (policy {view.policy})"),
            ("Order", view.team.order.value + (f", moderator {view.team.moderator}"
                                               if view.team.moderator else "")),
            ("Roles", roles_line(view))]
    if view.error:
        rows.append(("Error", view.error))
    return ["| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows)]


def _turn(n: int, entry: TranscriptEntry) -> list[str]:
    lines = [f"### Turn {n} — {entry.role or '?'} ({entry.vm or '?'})", "",
             entry.content.strip() or "*(nothing said)*", ""]
    if entry.findings:
        lines += [*(f"- {one_line(f)}" for f in entry.findings), ""]
    lines += [f"<small>{cost_line(entry)}</small>", ""]
    if entry.strike:
        lines += [f"**Strike:** {one_line(entry.strike)}", ""]
    if entry.fallback:
        lines += [f"**Fallback:** {one_line(entry.fallback)}", ""]
    return lines


def markdown(t: Transcript) -> str:
    view = t.collab
    lines = [f"# {one_line(view.task)}", "", *_header(view), "", "## Transcript", ""]
    turns = 0
    for entry in t.entries:
        if entry.kind is EntryKind.TURN:
            turns += 1
            lines += _turn(turns, entry)
        else:
            lines += [f"*{one_line(entry.content).replace('*', chr(92) + '*')}*", ""]
    if not t.entries:
        lines += ["*No entry yet.*", ""]
    if view.final_answer is not None:
        lines += ["## Final answer", "", view.final_answer.strip(), ""]
    lines += ["---", "", f"Collaboration {view.id}, started {_when(view.created_at)}"]
    return "\n".join(lines) + "\n"
