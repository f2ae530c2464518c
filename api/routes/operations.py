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


@router.get("/{op_id}/events", response_class=StreamingResponse, responses=sse.SSE_RESPONSE)
def operation_events(
    op_id: OpId, ctx: Ctx,
    last_event_id: Annotated[int | None, Header(ge=-1, description="resume after this line")]
    = None,
) -> StreamingResponse:
    """Progress lines as ``progress`` events, then a final ``succeeded`` or ``failed``
    event carrying the operation."""
    start = 0 if last_event_id is None else last_event_id + 1
    return sse.response(sse.operation_events(ctx.ops.get(op_id), start))
