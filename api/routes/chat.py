"""Chat with the foreground or a named VM, and a VM's memory (through its agent).

As in the CLI, talking to a VM that does not run activates it first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import sse
from api.context import ApiContext, Ctx
from api.models import ChatReply, ChatRequest, MemoryAdd, MemorySearch, RefPath
from api.routes.common import PROTECTED
from guest_agent.protocol import (
    MemoryAddResponse,
    MemoryImportResponse,
    MemoryListResponse,
    MemorySearchResponse,
    MemoryType,
)

router = APIRouter(tags=["chat"], **PROTECTED)
NDJSON = "application/x-ndjson"


def _chat(ctx: ApiContext, ref: str | None, body: ChatRequest) -> ChatReply | StreamingResponse:
    chat = ctx.host.chat
    if body.stream:
        chunks = sse.primed(chat.stream(ref, body.message, body.new, None, **body.sampling()))

        def failed(exc: BaseException) -> None:
            if ref is not None:
                ctx.record_failure(ref, "chat stream", exc)

        return sse.response(sse.model_events(chunks, failed))
    record, answer = chat.ask(ref, body.message, body.new, None, **body.sampling())
    return ChatReply.model_validate({**answer.model_dump(), "vm": record.name})


@router.post("/chat", response_model=ChatReply, responses=sse.SSE_RESPONSE)
def chat_foreground(body: ChatRequest, ctx: Ctx) -> ChatReply | StreamingResponse:
    """Ask the foreground VM; with ``stream`` the answer comes as server-sent events
    (OpenAI chunks, then ``[DONE]``)."""
    return _chat(ctx, None, body)


@router.post("/vms/{name}/chat", response_model=ChatReply, responses=sse.SSE_RESPONSE)
def chat_vm(name: RefPath, body: ChatRequest, ctx: Ctx) -> ChatReply | StreamingResponse:
    """Ask a named VM (or a subsystem's VM)."""
    return _chat(ctx, name, body)


@router.post("/vms/{name}/memory")
def memory_add(name: RefPath, body: MemoryAdd, ctx: Ctx) -> MemoryAddResponse:
    """Store one memory (deduplicated by content)."""
    return ctx.host.chat.agent(name).memory_add(body)


@router.get("/vms/{name}/memory")
def memory_list(
    name: RefPath, ctx: Ctx,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    memory_type: MemoryType | None = None,
) -> MemoryListResponse:
    """A page of the VM's memories, newest first."""
    return ctx.host.chat.agent(name).memory_list(offset, limit, memory_type)


@router.post("/vms/{name}/memory/search")
def memory_search(name: RefPath, body: MemorySearch, ctx: Ctx) -> MemorySearchResponse:
    """Memories nearest in meaning to the query."""
    return ctx.host.chat.agent(name).memory_search(body)


@router.get("/vms/{name}/memory/export", response_class=Response, responses={
    200: {"content": {NDJSON: {"schema": {"type": "string"}}}, "description": "JSON lines"}})
def memory_export(name: RefPath, ctx: Ctx) -> Response:
    """Every memory as JSON lines (what import takes)."""
    return Response(ctx.host.chat.agent(name).memory_export(), media_type=NDJSON)


@router.post("/vms/{name}/memory/import", openapi_extra={"requestBody": {
    "required": True, "content": {NDJSON: {"schema": {"type": "string"}}}}})
async def memory_import(name: RefPath, request: Request, ctx: Ctx) -> MemoryImportResponse:
    """Import memories as exported (JSON lines); known ones are skipped."""
    text = (await request.body()).decode(errors="replace")
    agent = await run_in_threadpool(ctx.host.chat.agent, name)
    return await run_in_threadpool(agent.memory_import, text)
