"""``somnus session``: dev sessions: chat turns, code block versions, diffs and rollback."""

from __future__ import annotations

import getpass
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.common import Clock, JsonFlag, emit_json, err, host, out
from core.errors import InvalidInput
from orchestrator.devsessions import (
    DevSession,
    DevSessionHeader,
    DevSessionManager,
    DevSessionStatus,
    block_paths,
)
from orchestrator.devsessions.diffs import diff_stat

session_app = typer.Typer(help="Dev sessions: chat turns, versioned code blocks, rollback.",
                          no_args_is_help=True)

SessionArg = Annotated[str, typer.Argument(help="Session id or a unique prefix of it.")]
BlockArg = Annotated[str, typer.Argument(help="Block path (as in 'show') or id prefix.")]


def manager() -> DevSessionManager:
    return host().sessions()


def _open(ref: str) -> tuple[DevSessionManager, UUID]:
    m = manager()
    return m, m.resolve_session_id(ref)


def _short(session_id: UUID) -> str:
    return str(session_id)[:8]


def _header_dict(header: DevSessionHeader) -> dict[str, Any]:
    return header.model_dump(mode="json", include=set(DevSessionHeader.model_fields))


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry (containers)
        return "local"


def _blocks(session: DevSession) -> list[dict[str, Any]]:
    paths = block_paths(session)
    return [{**b.model_dump(mode="json"), "path": paths[b.block_id]}
            for b in session.code_blocks.values()]


@session_app.command("new")
def session_new(
    title: Annotated[str, typer.Option(help="What the session is about.")] = "Untitled Dev Session",
    user: Annotated[str | None, typer.Option(help="User id (default: your login).")] = None,
    chat_session: Annotated[UUID | None, typer.Option(help="Chat session it belongs to.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Start a dev session."""
    session = manager().create_session(user or _login(), title=title,
                                       chat_session_id=chat_session)
    if as_json:
        emit_json(_header_dict(session))
    else:
        out.print(f"dev session {session.dev_session_id} started: {escape(session.title)}")


@session_app.command("list")
def session_list(
    status: Annotated[DevSessionStatus | None, typer.Option(help="Only this status.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's sessions.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List dev sessions, newest first."""
    headers = manager().list_sessions(user, status)
    if as_json:
        emit_json([_header_dict(h) for h in headers])
        return
    table = Table("ID", "TITLE", "STATUS", "USER", "STARTED", "LAST ACTIVITY")
    for h in headers:
        table.add_row(_short(h.dev_session_id), Text(h.title), h.status.value, Text(h.user_id),
                      f"{h.start_time:%Y-%m-%d %H:%M}", f"{h.last_activity:%Y-%m-%d %H:%M}")
    out.print(table if headers else "no dev sessions yet: try 'somnus session new --title …'")


@session_app.command("show")
def session_show(session: SessionArg, as_json: JsonFlag = False) -> None:
    """Show a session: its fields, summary and code blocks."""
    m, sid = _open(session)
    current = m.get_session(sid)
    summary = current.get_summary()
    if as_json:
        emit_json({**_header_dict(current), "summary": summary.model_dump(mode="json"),
                   "code_blocks": _blocks(current)})
        return
    info = Table(show_header=False, box=None)
    for key, value in _header_dict(current).items():
        info.add_row(key, Text(str(value)))
    info.add_row("events", str(summary.event_count))
    info.add_row("duration", f"{summary.duration_seconds:.0f}s")
    out.print(info)
    blocks = Table("BLOCK", "PATH", "LANGUAGE", "VERSION", "LINES", "MODIFIED")
    for b in _blocks(current):
        blocks.add_row(b["block_id"][:8], Text(b["path"]), b["language"], str(b["version"]),
                       str(len(b["content"].splitlines())), b["last_modified"][:19])
    out.print(blocks if current.code_blocks else "no code blocks yet")


@session_app.command("log")
def session_log(session: SessionArg, as_json: JsonFlag = False) -> None:
    """Show a session's event log, oldest first."""
    m, sid = _open(session)
    current = m.get_session(sid)
    if as_json:
        emit_json([e.model_dump(mode="json") for e in current.event_log])
        return
    paths = block_paths(current)
    table = Table("ID", "TIME", "EVENT", "BLOCK", "DETAIL")
    for e in current.event_log:
        block = paths.get(e.target_block_id, "") if e.target_block_id else ""
        detail = (f"v{e.metadata.get('version')}" if e.target_block_id
                  else e.content.strip().split("\n", 1)[0][:60])
        table.add_row(str(e.event_id), f"{e.timestamp:%H:%M:%S}", e.event_type.value,
                      Text(block), Text(detail))
    out.print(table)


@session_app.command("diff")
def session_diff(
    session: SessionArg,
    block: BlockArg,
    from_version: Annotated[int | None, typer.Option("--from", help="Old version (0: none).")]
    = None,
    to_version: Annotated[int | None, typer.Option("--to", help="New version (default: latest).")]
    = None,
) -> None:
    """Print the unified diff between two versions of a block (default: the last change)."""
    m, sid = _open(session)
    diff = m.diff_code_block(sid, m.resolve_block_id(sid, block), from_version, to_version)
    if diff:
        sys.stdout.write(diff)  # raw: a diff must reach scripts and 'patch' byte for byte
    else:
        err.print("no differences")


@session_app.command("rollback")
def session_rollback(
    session: SessionArg,
    block: BlockArg,
    to: Annotated[int, typer.Option("--to", help="Version whose content to restore.")],
) -> None:
    """Restore an earlier version of a block, as a new version (nothing is deleted)."""
    m, sid = _open(session)
    change = m.rollback_code_block(sid, m.resolve_block_id(sid, block), to)
    added, removed = diff_stat(change.diff)
    path = block_paths(m.get_session(sid))[change.block.block_id]
    out.print(f"{escape(path)} rolled back to version {to}, "
              f"saved as version {change.block.version} (+{added} -{removed})")


@session_app.command("turn")
def session_turn(
    session: SessionArg,
    prompt: Annotated[str, typer.Option(help="What the user asked.")],
    answer: Annotated[str | None, typer.Option(help="What the model answered.")] = None,
    answer_file: Annotated[Path | None, typer.Option(help="Read the answer from a file; - is "
                                                          "stdin.")] = None,
    target: Annotated[str | None, typer.Option(help="Block that unnamed fences revise.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Record one chat turn; code fences in the answer become blocks or new versions."""
    if (answer is None) == (answer_file is None):
        raise InvalidInput("give exactly one of --answer and --answer-file")
    if answer_file is not None:
        answer = sys.stdin.read() if str(answer_file) == "-" else _read(answer_file)
    assert answer is not None
    m, sid = _open(session)
    target_id = m.resolve_block_id(sid, target) if target else None
    result = m.record_turn(sid, prompt, answer, target_block_id=target_id)
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    paths = block_paths(m.get_session(sid))
    for change in result.changes:
        added, removed = diff_stat(change.diff)
        verb = "created" if change.block.version == 1 else "updated"
        out.print(f"{verb} {escape(paths[change.block.block_id])} ({change.block.language}, "
                  f"version {change.block.version}, +{added} -{removed})")
    if not result.changes:
        out.print("turn recorded; no code changes")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc


@session_app.command("promote")
def session_promote(
    session: SessionArg,
    project: Annotated[str, typer.Option(help="Project to promote into (created if missing).")],
    memory: Annotated[int | None, typer.Option(help="RAM in MiB of a new project VM.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Promote a session into a project VM: one git commit per code change, memories moved."""
    _m, sid = _open(session)
    result = host().projects().promote(sid, project, memory, Clock())
    if as_json:
        emit_json({"project": result.project, "session": str(sid), "created": result.created,
                   "commits": result.commits, "memory": asdict(result.memory)})
        return
    where = "new project" if result.created else "project"
    out.print(f"dev session {_short(sid)} promoted into {where} '{project}': "
              f"{len(result.commits)} commits, HEAD {result.commits[-1][:8]}")
    out.print(f"memory: {escape(result.memory.line())}")


def _status_command(name: str, status: DevSessionStatus, done: str, help_text: str) -> None:
    def command(session: SessionArg) -> None:
        m, sid = _open(session)
        m.set_status(sid, status)
        out.print(f"dev session {_short(sid)} {done}")

    command.__doc__ = help_text
    session_app.command(name)(command)


_status_command("pause", DevSessionStatus.PAUSED, "paused", "Pause an active session.")
_status_command("resume", DevSessionStatus.ACTIVE, "resumed", "Resume a paused session.")
_status_command("complete", DevSessionStatus.COMPLETED, "completed",
                "Mark a session completed (its code no longer changes).")
_status_command("archive", DevSessionStatus.ARCHIVED, "archived",
                "Archive a session (final; promoted sessions cannot be archived).")
