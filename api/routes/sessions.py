"""Dev sessions: create, list, show, chat turns, code block versions, diffs, rollback,
status and promotion into a project. Each handler is one call into
``DevSessionManager`` (or ``ProjectService`` for promotion), as ``somnus session`` makes.

``{session}`` is a session id or a unique prefix of it; ``{block}`` a block id (prefix)
or its path as listed by ``GET /sessions/{session}`` (paths with '/' need the id).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.context import Ctx
from api.models import (
    BlockDiff,
    BlockPath,
    BlockRollback,
    SessionCreate,
    SessionDetail,
    SessionPath,
    SessionPromote,
    SessionStatusChange,
    TurnCreate,
    VersionQuery,
)
from api.operations import OperationView, Progress
from api.routes.common import PROTECTED, accepted
from orchestrator.devsessions import (
    BlockChange,
    CodeBlock,
    DevSessionEvent,
    DevSessionHeader,
    DevSessionStatus,
    TurnResult,
)

router = APIRouter(prefix="/sessions", tags=["sessions"], **PROTECTED)
DiffVersion = Annotated[int | None, Query(ge=0, description="version; 0 is 'no file'")]


@router.get("")
def list_sessions(ctx: Ctx, status: DevSessionStatus | None = None,
                  user: Annotated[str | None, Query(max_length=200)] = None
                  ) -> list[DevSessionHeader]:
    """Dev sessions without their logs, newest first; optionally one status or user's."""
    return ctx.host.sessions().list_sessions(user, status)


@router.post("", status_code=201)
def create_session(body: SessionCreate, ctx: Ctx) -> DevSessionHeader:
    """Start a dev session."""
    return ctx.host.sessions().create_session(body.user_id, title=body.title,
                                         chat_session_id=body.chat_session_id)


@router.get("/{session}")
def show_session(session: SessionPath, ctx: Ctx) -> SessionDetail:
    """A session: its fields, summary and code blocks (latest versions, with their paths)."""
    m = ctx.host.sessions()
    return SessionDetail.of(m.get_session(m.resolve_session_id(session)))


@router.get("/{session}/events")
def session_events(session: SessionPath, ctx: Ctx) -> list[DevSessionEvent]:
    """The session's event log, oldest first (code events carry their diff)."""
    m = ctx.host.sessions()
    return m.get_session(m.resolve_session_id(session)).event_log


@router.post("/{session}/turns", status_code=201)
def record_turn(session: SessionPath, body: TurnCreate, ctx: Ctx) -> TurnResult:
    """Record one chat turn; the answer's code fences become blocks or new versions."""
    m = ctx.host.sessions()
    sid = m.resolve_session_id(session)
    target = m.resolve_block_id(sid, body.target) if body.target else None
    return m.record_turn(sid, body.prompt, body.answer, target_block_id=target)


@router.get("/{session}/blocks/{block}")
def get_block(session: SessionPath, block: BlockPath, ctx: Ctx,
              version: VersionQuery = None) -> CodeBlock:
    """A code block at one version (default: the latest)."""
    m = ctx.host.sessions()
    sid = m.resolve_session_id(session)
    return m.get_code_block(sid, m.resolve_block_id(sid, block), version)


@router.get("/{session}/blocks/{block}/diff")
def diff_block(session: SessionPath, block: BlockPath, ctx: Ctx,
               from_version: Annotated[DiffVersion, Query(alias="from")] = None,
               to_version: Annotated[DiffVersion, Query(alias="to")] = None) -> BlockDiff:
    """The unified diff between two versions (default: the previous and the latest)."""
    m = ctx.host.sessions()
    sid = m.resolve_session_id(session)
    block_id = m.resolve_block_id(sid, block)
    return BlockDiff(block_id=block_id,
                     diff=m.diff_code_block(sid, block_id, from_version, to_version))


@router.post("/{session}/blocks/{block}/rollback")
def rollback_block(session: SessionPath, block: BlockPath, body: BlockRollback,
                   ctx: Ctx) -> BlockChange:
    """Restore an earlier version's content as the next version (nothing is deleted)."""
    m = ctx.host.sessions()
    sid = m.resolve_session_id(session)
    return m.rollback_code_block(sid, m.resolve_block_id(sid, block), body.to)


@router.post("/{session}/status")
def set_status(session: SessionPath, body: SessionStatusChange, ctx: Ctx) -> DevSessionHeader:
    """Pause, resume, complete or archive the session (409 if its status does not allow it)."""
    m = ctx.host.sessions()
    return m.set_status(m.resolve_session_id(session), body.status)


@router.post("/{session}/promote", status_code=202)
def promote_session(session: SessionPath, body: SessionPromote, ctx: Ctx,
                    response: Response) -> OperationView:
    """Promote the session into a project VM (an operation; the project is created if
    missing): one git commit per code change, the session moved into its memory."""
    sid = ctx.host.sessions().resolve_session_id(session)  # an unknown session is a 404 now

    def work(progress: Progress) -> dict[str, Any]:
        result = ctx.host.projects().promote(sid, body.project, body.memory_mib, progress)
        return {"project": result.project, "session": str(sid), "created": result.created,
                "commits": result.commits, "memory": asdict(result.memory)}

    return accepted(ctx.ops.start("promote", body.project, work), response)
