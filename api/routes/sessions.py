"""Dev sessions: create, list, show, chat turns, code block versions, diffs, rollback,
status and promotion into a project. Each handler is one call into
``DevSessionManager`` (or ``ProjectService`` for promotion), as ``somnus session`` makes.

``{session}`` is a session id or a unique prefix of it; ``{block}`` a block id (prefix)
or its path as listed by ``GET /sessions/{session}`` (paths with '/' need the id).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated, Any
from uuid import UUID

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
from api.routes.common import ACCEPTED, PROTECTED, accepted
from core.errors import Conflict, InvalidInput
from orchestrator.devsessions import (
    BlockChange,
    CodeBlock,
    DevSessionEvent,
    DevSessionHeader,
    DevSessionManager,
    DevSessionStatus,
    TurnResult,
)

router = APIRouter(prefix="/sessions", tags=["sessions"], **PROTECTED)
DiffVersion = Annotated[int | None, Query(ge=0, description="version; 0 is 'no file'")]


@contextmanager
def _ambiguity_is_a_conflict() -> Iterator[None]:
    """A prefix matching several ids is the only InvalidInput of the manager's resolvers;
    the request is well formed, what it names is not unique now: 409, not 422."""
    try:
        yield
    except InvalidInput as exc:
        raise Conflict(exc.message) from None


def _session_id(m: DevSessionManager, ref: str) -> UUID:
    with _ambiguity_is_a_conflict():
        return m.resolve_session_id(ref)


def _block_id(m: DevSessionManager, sid: UUID, ref: str) -> UUID:
    with _ambiguity_is_a_conflict():
        return m.resolve_block_id(sid, ref)


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
    return SessionDetail.of(m.get_session(_session_id(m, session)))


@router.get("/{session}/events")
def session_events(session: SessionPath, ctx: Ctx) -> list[DevSessionEvent]:
    """The session's event log, oldest first (code events carry their diff)."""
    m = ctx.host.sessions()
    return m.get_session(_session_id(m, session)).event_log


@router.post("/{session}/turns", status_code=201)
def record_turn(session: SessionPath, body: TurnCreate, ctx: Ctx) -> TurnResult:
    """Record one chat turn; the answer's code fences become blocks or new versions."""
    m = ctx.host.sessions()
    sid = _session_id(m, session)
    target = _block_id(m, sid, body.target) if body.target else None
    return m.record_turn(sid, body.prompt, body.answer, target_block_id=target)


@router.get("/{session}/blocks/{block}")
def get_block(session: SessionPath, block: BlockPath, ctx: Ctx,
              version: VersionQuery = None) -> CodeBlock:
    """A code block at one version (default: the latest)."""
    m = ctx.host.sessions()
    sid = _session_id(m, session)
    return m.get_code_block(sid, _block_id(m, sid, block), version)


@router.get("/{session}/blocks/{block}/diff")
def diff_block(session: SessionPath, block: BlockPath, ctx: Ctx,
               from_version: Annotated[DiffVersion, Query(alias="from")] = None,
               to_version: Annotated[DiffVersion, Query(alias="to")] = None) -> BlockDiff:
    """The unified diff between two versions (default: the previous and the latest)."""
    m = ctx.host.sessions()
    sid = _session_id(m, session)
    block_id = _block_id(m, sid, block)
    return BlockDiff(block_id=block_id,
                     diff=m.diff_code_block(sid, block_id, from_version, to_version))


@router.post("/{session}/blocks/{block}/rollback")
def rollback_block(session: SessionPath, block: BlockPath, body: BlockRollback,
                   ctx: Ctx) -> BlockChange:
    """Restore an earlier version's content as the next version (nothing is deleted)."""
    m = ctx.host.sessions()
    sid = _session_id(m, session)
    return m.rollback_code_block(sid, _block_id(m, sid, block), body.to)


@router.post("/{session}/status")
def set_status(session: SessionPath, body: SessionStatusChange, ctx: Ctx) -> DevSessionHeader:
    """Pause, resume, complete or archive the session (409 if its status does not allow it)."""
    m = ctx.host.sessions()
    return m.set_status(_session_id(m, session), body.status)


@router.post("/{session}/promote", status_code=202, responses=ACCEPTED)
def promote_session(session: SessionPath, body: SessionPromote, ctx: Ctx,
                    response: Response) -> OperationView:
    """Promote the session into a project VM (an operation; the project is created if
    missing): one git commit per code change, the session moved into its memory."""
    sid = _session_id(ctx.host.sessions(), session)  # an unknown session is a 404 now

    def work(progress: Progress) -> dict[str, Any]:
        result = ctx.host.projects().promote(sid, body.project, body.memory_mib, progress)
        return {"project": result.project, "session": str(sid), "created": result.created,
                "commits": result.commits, "memory": asdict(result.memory)}

    return accepted(ctx.ops.start("promote", body.project, work), response)
