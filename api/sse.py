"""Server-sent events: operation progress and streamed chat answers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.models import error_body
from api.operations import Operation

T = TypeVar("T")
MEDIA_TYPE = "text/event-stream"
# Documents an SSE answer in the OpenAPI schema.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
          "description": "server-sent events"},
}


def event(data: str, name: str | None = None, event_id: int | None = None) -> str:
    """One SSE event (``data`` must be one line: JSON is)."""
    head = (f"event: {name}\n" if name else "") + (f"id: {event_id}\n" if event_id is not None
                                                     else "")
    return f"{head}data: {data}\n\n"


def response(events: Iterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type=MEDIA_TYPE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def primed(items: Iterator[T]) -> Iterator[T]:
    """Run a lazy generator to its first item now, so failures before any output
    (unknown VM, VM not running) become ordinary error responses, not a broken stream."""
    try:
        first = next(items)
    except StopIteration:
        return iter(())
    return chain([first], items)


def operation_events(op: Operation, seen: int = 0) -> Iterator[str]:
    """``progress`` events (id = line index, for Last-Event-ID), then one final event
    named after the end state carrying the whole operation; comments keep it alive."""
    for index, line in op.updates(seen):
        if line is None:
            yield ": keepalive\n\n"
        else:
            yield event(json.dumps({"line": line}), "progress", index)
    view = op.view()
    yield event(view.model_dump_json(), view.state.value)


def model_events(items: Iterator[BaseModel],
                 on_error: Callable[[BaseException], None] | None = None) -> Iterator[str]:
    """Models as ``data:`` events (OpenAI style, ending with ``[DONE]``); a failure after
    the stream began is sent in-band as an ``error`` event, since the status is sent."""
    try:
        for item in items:
            yield event(item.model_dump_json())
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        yield event(error_body(exc).model_dump_json(), "error")
        return
    yield event("[DONE]")
