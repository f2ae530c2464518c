"""Long operations: poll one, or follow its progress as server-sent events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import StreamingResponse

from api import sse
from api.context import Ctx
from api.operations import OperationView
from api.routes.common import PROTECTED

router = APIRouter(prefix="/operations", tags=["operations"], **PROTECTED)
OpId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="operation id")]


@router.get("")
def list_operations(ctx: Ctx) -> list[OperationView]:
    """Operations of this server process, newest first."""
    return [op.view() for op in ctx.ops.recent()]


@router.get("/{op_id}")
def get_operation(op_id: OpId, ctx: Ctx) -> OperationView:
    """State, progress lines, result or error."""
    return ctx.ops.get(op_id).view()


# What a reconnecting EventSource sends: the id of the last event it got (a line index).
# Not nullable: a header is absent or a number (the document must not offer 'null').
LastEventId = Annotated[int, Header(ge=-1, description="resume after this progress line "
                                                      "(the last event id received)")]


@router.get("/{op_id}/events", response_class=StreamingResponse,
            responses=sse.OPERATION_EVENTS)
def operation_events(op_id: OpId, ctx: Ctx, last_event_id: LastEventId = -1
                     ) -> StreamingResponse:
    """Progress lines as ``progress`` events, then a final ``succeeded`` or ``failed``
    event carrying the operation."""
    return sse.response(sse.operation_events(ctx.ops.get(op_id), last_event_id + 1))
