"""Server-sent events: operation progress and streamed chat answers, and their schemas.

In the OpenAPI document (3.1) an event stream's ``schema`` describes one event as a
client parses it, ``{event, data, id}``; each kind of event is one branch, and a JSON
``data`` names its model with ``contentMediaType``/``contentSchema``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from itertools import chain
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.models import ErrorBody, error_body
from api.operations import Operation, OperationState, OperationView
from guest_agent.protocol import ChatCompletionChunk
from guest_agent.protocol.research import ResearchEvent
from guest_agent.protocol.runs import RunEvent
from orchestrator.collab.models import TranscriptEntry

T = TypeVar("T")
MEDIA_TYPE = "text/event-stream"
DONE = "[DONE]"
ID_PATTERN = "^[0-9]+$"  # a progress line's index, what Last-Event-ID sends back


class ProgressLine(BaseModel):
    """The data of one ``progress`` event."""

    line: str


# Models that only event data refers to: the app adds them to the document's components.
EVENT_MODELS: list[type[BaseModel]] = [ProgressLine, ChatCompletionChunk, RunEvent,
                                       ResearchEvent, TranscriptEntry]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _event(name: str, data: dict[str, Any], *, with_id: bool = False,
           title: str | None = None) -> dict[str, Any]:
    """One kind of event: its name (``message`` when the stream names none) and data; with
    ``with_id`` it carries an ``id`` (later events inherit it, as the SSE spec says)."""
    properties: dict[str, Any] = {"event": {"const": name}, "data": data}
    if with_id:
        properties["id"] = {"type": "string", "pattern": ID_PATTERN}
    return {"title": title or name, "type": "object", "properties": properties,
            "required": ["event", "data"], "additionalProperties": False}


def _end(state: OperationState) -> dict[str, Any]:
    view = {"allOf": [_ref(OperationView), {"properties": {"state": {"const": state.value}}}]}
    return _event(state.value, _json(view), with_id=True)


OPERATION_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "server-sent events: `progress` (id: the line's index), then one "
                   "`succeeded` or `failed` carrying the operation",
    "content": {MEDIA_TYPE: {"schema": {"oneOf": [
        _event("progress", _json(_ref(ProgressLine)), with_id=True),
        *(_end(state) for state in (OperationState.SUCCEEDED, OperationState.FAILED)),
    ]}}},
}}
CHAT_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "JSON, or with `stream` server-sent events: OpenAI chunks, then "
                   f"`{DONE}`; a failure after the first chunk is an `error` event instead",
    "content": {MEDIA_TYPE: {"schema": {"oneOf": [
        _event("message", {**_json(_ref(ChatCompletionChunk)), "not": {"const": DONE}},
               title="chunk"),
        _event("message", {"const": DONE}, title="done"),
        _event("error", _json(_ref(ErrorBody))),
    ]}}},
}}


RUN_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "server-sent events: the run's events as they come (`started`, `phase`, "
                   f"`stdout`, `stderr`, then one `result`), then `{DONE}`; a failure of the "
                   "host's side after the first event is an `error` event",
    "content": {MEDIA_TYPE: {"schema": {"oneOf": [
        _event("message", {**_json(_ref(RunEvent)), "not": {"const": DONE}}, title="event"),
        _event("message", {"const": DONE}, title="done"),
        _event("error", _json(_ref(ErrorBody))),
    ]}}},
}}


RESEARCH_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "server-sent events: the run's events as they come (id: the event's "
                   f"`seq`, what `after` takes to follow on), then `{DONE}` once the run has "
                   "finished; a failure of the host's side after the first event is an `error` "
                   "event",
    "content": {MEDIA_TYPE: {"schema": {"oneOf": [
        _event("message", {**_json(_ref(ResearchEvent)), "not": {"const": DONE}},
               with_id=True, title="event"),
        _event("message", {"const": DONE}, with_id=True, title="done"),
        _event("error", _json(_ref(ErrorBody)), with_id=True),
    ]}}},
}}


COLLAB_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "server-sent events: the transcript's entries as they are appended (id: "
                   "the entry's `seq`, what `after` or `Last-Event-ID` takes to follow on), "
                   f"then `{DONE}` once the run has stopped; a failure of the host's side "
                   "after the first event is an `error` event",
    "content": {MEDIA_TYPE: {"schema": {"oneOf": [
        _event("message", {**_json(_ref(TranscriptEntry)), "not": {"const": DONE}},
               with_id=True, title="entry"),
        _event("message", {"const": DONE}, with_id=True, title="done"),
        _event("error", _json(_ref(ErrorBody)), with_id=True),
    ]}}},
}}


def event(data: str, name: str | None = None, event_id: int | None = None) -> str:
    """One SSE event (``data`` must be one line: JSON is)."""
    head = (f"event: {name}\n" if name else "") + (f"id: {event_id}\n" if event_id is not None
                                                     else "")
    return f"{head}data: {data}\n\n"


def response(events: Iterator[str] | AsyncIterator[str]) -> StreamingResponse:
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
            yield event(ProgressLine(line=line).model_dump_json(), "progress", index)
    view = op.view()
    yield event(view.model_dump_json(), view.state.value)


def model_events(items: Iterator[BaseModel],
                 on_error: Callable[[BaseException], None] | None = None,
                 event_id: Callable[[Any], int] | None = None) -> Iterator[str]:
    """Models as ``data:`` events (OpenAI style, ending with ``[DONE]``); a failure after
    the stream began is sent in-band as an ``error`` event, since the status is sent.
    ``event_id`` gives each event its ``id`` (what a reconnecting client resumes after)."""
    try:
        for item in items:
            yield event(item.model_dump_json(),
                        event_id=event_id(item) if event_id is not None else None)
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        yield event(error_body(exc).model_dump_json(), "error")
        return
    yield event(DONE)
