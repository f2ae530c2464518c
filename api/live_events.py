"""The app's live feed (``GET /events``): what changed on the workstation, as server-sent
events, so no view reloads to find out.

Events (each ``data`` is one JSON object):

- ``status``: the whole ``StatusView`` (foreground, tiers, budget), on connect and
  whenever it changes;
- ``lifecycle``: ``{vm, domain, event, detail, at}``, each libvirt lifecycle event the
  server's live view received (``orchestrator.live``);
- ``swap``: a ``SwapView`` ledger row, when a swap starts, moves a phase or ends;
- ``sample``: ``{vm, at, metrics}``, each round of the security monitor;
- ``vm_error``: ``{vm, at, source, message}``, each failure recorded against a VM.

Lifecycle notes are in memory and looked at every tick; the database is read once a
second, and only for rows newer than the last one sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from api import sse
from api.context import ApiContext
from orchestrator import errors_log, views

TICK_S = 0.25
DATABASE_EVERY = 4  # ticks: the database is read once a second
KEEPALIVE_S = 15.0  # a comment line keeps proxies and the browser from timing out


@dataclass
class Cursor:
    """What this client has been sent already."""

    lifecycle: int = 0
    sample: int = 0
    error: int = 0
    swaps: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (phase, outcome)
    status: bytes = b""
    domains: dict[str, str] = field(default_factory=dict)  # domain name -> VM name


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _start(ctx: ApiContext) -> Cursor:
    """A new client starts from now: history is what the REST reads are for."""
    host = ctx.host
    return Cursor(lifecycle=ctx.live.events if ctx.live is not None else 0,
                  sample=host.security.store.last_sample_id(),
                  error=errors_log.last_error_id(host.store),
                  swaps={row.seq: (row.phase.value, row.outcome.value)
                         for row in views.swap_views(host.store, 10)})


def _database_changes(ctx: ApiContext, cursor: Cursor) -> list[str]:
    """Swaps, samples and errors newer than what ``cursor`` says was sent; moves it."""
    host = ctx.host
    out: list[str] = []
    for swap in reversed(views.swap_views(host.store, 10)):
        mark = (swap.phase.value, swap.outcome.value)
        if cursor.swaps.get(swap.seq) != mark:
            cursor.swaps[swap.seq] = mark
            out.append(sse.event(swap.model_dump_json(), "swap"))
    for row in host.security.store.samples_after(cursor.sample):
        cursor.sample = max(cursor.sample, row.id or 0)
        out.append(sse.event(json.dumps({"vm": row.vm_name, "at": row.at,
                                         "metrics": json.loads(row.metrics)}), "sample"))
    for error in errors_log.errors_after(host.store, cursor.error):
        cursor.error = max(cursor.error, error.id or 0)
        out.append(sse.event(json.dumps({"vm": error.vm_name, "at": error.at.isoformat(),
                                         "source": error.source, "message": error.message}),
                             "vm_error"))
    return out


def _lifecycle(ctx: ApiContext, cursor: Cursor) -> list[str]:
    if ctx.live is None:
        return []
    out = []
    for note in ctx.live.notes_after(cursor.lifecycle):
        cursor.lifecycle = note.seq
        if note.domain not in cursor.domains:
            cursor.domains = {r.domain_name: r.name for r in ctx.host.store.list_vms()}
        data: dict[str, Any] = {"vm": cursor.domains.get(note.domain), "domain": note.domain,
                                "event": note.event, "detail": note.detail,
                                "at": _iso(note.at)}
        out.append(sse.event(json.dumps(data), "lifecycle"))
    return out


async def _status(ctx: ApiContext, cursor: Cursor) -> list[str]:
    body = await ctx.reads.get("status", lambda: views.status_view(ctx.host.vms, ctx.states))
    if body == cursor.status:
        return []
    cursor.status = body
    return [sse.event(body.decode(), "status")]


async def feed(ctx: ApiContext) -> AsyncIterator[str]:
    """The events of one client, until it disconnects (the server then cancels this)."""
    cursor = await run_in_threadpool(_start, ctx)
    quiet_since = time.monotonic()
    tick = 0
    while True:
        out: list[str] = []
        moved = ctx.live is not None and ctx.live.events != cursor.lifecycle
        if moved:
            out += await run_in_threadpool(_lifecycle, ctx, cursor)
        if tick % DATABASE_EVERY == 0:
            out += await run_in_threadpool(_database_changes, ctx, cursor)
        if moved or out or tick % DATABASE_EVERY == 0:
            out += await _status(ctx, cursor)
        if out:
            quiet_since = time.monotonic()
            for text in out:
                yield text
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        tick += 1
        await asyncio.sleep(TICK_S)
