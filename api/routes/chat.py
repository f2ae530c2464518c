"""Chat with the foreground or a named VM, and a VM's memory (through its agent).

As in the CLI, talking to a VM that does not run activates it first.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api import sse
from api.context import ApiContext, Ctx
from api.models import ChatReply, ChatRequest, MemoryAdd, MemorySearch, RefPath
from api.routes.common import PROTECTED
from core.errors import GuestError, InvalidInput
from guest_agent.protocol import (
    MemoryAddResponse,
    MemoryImportResponse,
    MemoryListResponse,
    MemoryRecord,
    MemorySearchResponse,
    MemoryType,
)

router = APIRouter(tags=["chat"], **PROTECTED)
NDJSON = "application/x-ndjson"
# JSON lines, one MemoryRecord each: as OpenAPI 3.2 reads a sequential media type, the
# schema is that of the whole read as an array.
MEMORY_LINES = {NDJSON: {"schema": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/MemoryRecord"}}}}


def _memory_lines(text: str) -> list[MemoryRecord]:
    """The memories of a JSON-lines body, or a 422 naming the first line that is not one.

    Lines end at LF only (JSON Lines): U+2028 or U+0085 inside a string is text, not
    a line break. Strict: the document's types are JSON's (no "1" for a number).
    """
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(MemoryRecord.model_validate_json(line, strict=True))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "line"
            raise InvalidInput(f"body line {number}: not a memory record: "
                               f"{where}: {problem['msg']}") from None
    return records


def _ascii_lines(items: list[Any]) -> str:
    """JSON lines with every non-ASCII character escaped: the agent (and many readers)
    split lines with ``str.splitlines``, which also breaks at U+2028 and U+0085, so a
    raw one inside a memory would cut its line in two."""
    return "".join(json.dumps(item) + "\n" for item in items)


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


@router.post("/chat", response_model=ChatReply, responses=sse.CHAT_EVENTS)
def chat_foreground(body: ChatRequest, ctx: Ctx) -> ChatReply | StreamingResponse:
    """Ask the foreground VM; with ``stream`` the answer comes as server-sent events
    (OpenAI chunks, then ``[DONE]``)."""
    return _chat(ctx, None, body)


@router.post("/vms/{name}/chat", response_model=ChatReply, responses=sse.CHAT_EVENTS)
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
    200: {"content": MEMORY_LINES, "description": "JSON lines, one memory each"}})
def memory_export(name: RefPath, ctx: Ctx) -> Response:
    """Every memory as JSON lines (what import takes)."""
    text = ctx.host.chat.agent(name).memory_export()
    try:
        items = [json.loads(line) for line in text.split("\n") if line.strip()]
    except ValueError as exc:
        raise GuestError(f"VM '{name}': its agent's export is not JSON lines ({exc})") from None
    return Response(_ascii_lines(items), media_type=NDJSON)


@router.post("/vms/{name}/memory/import", openapi_extra={"requestBody": {
    "required": True, "description": "JSON lines, one memory each (blank lines are skipped)",
    "content": MEMORY_LINES}})
async def memory_import(name: RefPath, request: Request, ctx: Ctx) -> MemoryImportResponse:
    """Import memories as exported (JSON lines); known ones are skipped."""
    raw = await request.body()
    # The body is required: none at all (no bytes, no media type) is a mistake, while an
    # empty export (no memories) sent as JSON lines imports nothing.
    if not raw and "content-type" not in request.headers:
        raise InvalidInput(f"body: missing; send JSON lines ({NDJSON}) as exported")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"body: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    lines = _ascii_lines([r.model_dump(mode="json") for r in _memory_lines(text)])
    agent = await run_in_threadpool(ctx.host.chat.agent, name)
    return await run_in_threadpool(agent.memory_import, lines)
