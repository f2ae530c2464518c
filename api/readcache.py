"""Rendered answers of the hot reads (``GET /vms``, ``GET /status``), kept until something
they show can have changed.

A cached document is served while three things hold: no libvirt lifecycle event arrived
(the live view's generation), no one committed to the database (SQLite's
``PRAGMA data_version`` on a connection of its own: it moves when any other
connection, in any process, commits), and it is younger than ``max_age_s`` (uptimes and
resident memory move on their own). Without a live view nothing is cached.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from orchestrator.live import LiveView


class ReadCache:
    """JSON bytes per key, valid for one (data version, event generation) and a second."""

    def __init__(self, db_path: Path, live: LiveView | None, max_age_s: float = 1.0) -> None:
        self.live = live
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[int, int], float, bytes]] = {}
        self._refreshing: set[str] = set()
        self._db = sqlite3.connect(db_path, check_same_thread=False) if live else None

    def _stamp(self) -> tuple[int, int] | None:
        if self._db is None or self.live is None or not self.live.subscribed:
            return None
        with self._lock:
            version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        return version, self.live.generation

    async def get(self, key: str, build: Callable[[], BaseModel]) -> bytes:
        """The rendering of ``key``: cached, or built (in a worker thread) and kept.

        A document only too old is still served once while a worker builds its successor
        (stale-while-revalidate), so a busy client never waits for the rebuild; one whose
        stamp moved (an event, a commit) is rebuilt before it is served.
        """
        stamp = self._stamp()
        if stamp is None:
            return await run_in_threadpool(_render, build)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == stamp:
            if time.monotonic() - entry[1] >= self.max_age_s and key not in self._refreshing:
                self._refreshing.add(key)
                asyncio.get_running_loop().create_task(self._refresh(key, stamp, build))
            return entry[2]
        body = await run_in_threadpool(_render, build)
        self._entries[key] = (stamp, time.monotonic(), body)
        return body

    async def _refresh(self, key: str, stamp: tuple[int, int],
                       build: Callable[[], BaseModel]) -> None:
        try:
            body = await run_in_threadpool(_render, build)
            self._entries[key] = (stamp, time.monotonic(), body)
        finally:
            self._refreshing.discard(key)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _render(build: Callable[[], BaseModel]) -> bytes:
    return build().model_dump_json().encode()
