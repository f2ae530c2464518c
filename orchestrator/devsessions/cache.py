"""An in-memory cache of open sessions, bounded by count (LRU) and by idle time."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

from orchestrator.devsessions.logs import session_log
from orchestrator.devsessions.models import DevSession


class SessionCache:
    """Keeps at most ``max_sessions`` sessions, none unused for more than ``idle_seconds``.

    Dropping an entry loses nothing: every change is already in the database.
    """

    def __init__(self, max_sessions: int, idle_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._clock = clock
        # Least recently used first; the order is also the order of last-use times.
        self._entries: OrderedDict[UUID, tuple[float, DevSession]] = OrderedDict()

    def get(self, session_id: UUID) -> DevSession | None:
        self.prune()
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        self._entries[session_id] = (self._clock(), entry[1])
        self._entries.move_to_end(session_id)
        return entry[1]

    def put(self, session: DevSession) -> None:
        self._entries[session.dev_session_id] = (self._clock(), session)
        self._entries.move_to_end(session.dev_session_id)
        self.prune()
        while len(self._entries) > self.max_sessions:
            _, (_, evicted) = self._entries.popitem(last=False)
            session_log(evicted).debug("evicted from the cache (full)")

    def discard(self, session_id: UUID) -> None:
        self._entries.pop(session_id, None)

    def prune(self) -> None:
        """Evict every session idle for longer than ``idle_seconds``."""
        cutoff = self._clock() - self.idle_seconds
        while self._entries:
            session_id, (used, session) = next(iter(self._entries.items()))
            if used > cutoff:
                break
            del self._entries[session_id]
            session_log(session).debug("evicted from the cache (idle)")

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)
