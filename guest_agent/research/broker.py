"""The fetch broker: how a research run reaches the web from a VM with no network.

A run's ``search`` or ``fetch`` queues a ``FetchRequest`` and blocks; the host's fetch
proxy long-polls the queue (``GET /research/fetches`` → ``pending``), checks its
allow-list, fetches, and posts the ``FetchResult`` back (``answer``), which wakes the run.

A request handed out is leased: if no answer comes within ``lease_s`` (the proxy died
mid-fetch), the next poll hands it out again. When nobody polls at all while a run waits,
``on_wait`` tells the run manager once per wait, so the user learns what the run needs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from guest_agent.protocol.research import FetchKind, FetchRequest, FetchResult, SearchResult
from guest_agent.research.folder import Cancelled
from guest_agent.research.pipeline import WebUnavailable

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 120.0
LEASE_S = 60.0  # a request handed out and not answered by then is handed out again
UNPOLLED_S = 5.0  # nobody polled for this long while a request waits: tell the run
MAX_POLL_WAIT_S = 30.0


@dataclass
class _Waiting:
    request: FetchRequest
    queued_at: float
    handed_at: float | None = None
    result: FetchResult | None = None
    abandoned: bool = False  # the run was cancelled while it waited
    answered: threading.Event = field(default_factory=threading.Event)


class FetchBroker:
    """The queue between research runs (``WebSource``) and the host's fetch proxy."""

    def __init__(self, timeout_s: float = ANSWER_TIMEOUT_S, lease_s: float = LEASE_S,
                 unpolled_s: float = UNPOLLED_S,
                 on_wait: Callable[[str], None] | None = None,
                 on_answer: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``on_wait(run_id)``: a request of the run waits with no host polling (once per
        wait); ``on_answer(run_id)``: the answer to such a wait came."""
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.unpolled_s = unpolled_s
        self.on_wait = on_wait
        self.on_answer = on_answer
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: dict[str, _Waiting] = {}  # by fetch_id, in queue order
        self._last_poll: float | None = None

    # -- the run's side (WebSource) ---------------------------------------------------------

    def search(self, run_id: str, query: str, limit: int) -> list[SearchResult]:
        """Web search results through the host; raises ``WebUnavailable``."""
        result = self._ask(FetchRequest(fetch_id=uuid.uuid4().hex, run_id=run_id,
                                        kind=FetchKind.SEARCH, query=query, limit=limit))
        if not result.ok:
            raise WebUnavailable(result.error or "the host's web search failed")
        return result.results[:limit]

    def fetch(self, run_id: str, url: str) -> FetchResult:
        """A page through the host (``ok`` False is returned: the run records why);
        raises ``WebUnavailable`` when no answer comes."""
        return self._ask(FetchRequest(fetch_id=uuid.uuid4().hex, run_id=run_id,
                                      kind=FetchKind.FETCH, url=url))

    def _ask(self, request: FetchRequest) -> FetchResult:
        now = self._clock()
        item = _Waiting(request, queued_at=now)
        told = False  # on_wait was called for this wait
        deadline = now + self.timeout_s
        try:
            with self._cond:
                self._waiting[request.fetch_id] = item
                self._cond.notify_all()  # wake a poll waiting for work
                try:
                    while item.result is None:
                        if item.abandoned:
                            raise Cancelled(f"research run '{request.run_id}' was cancelled")
                        now = self._clock()
                        if now >= deadline:
                            raise WebUnavailable(f"no answer from the host's fetch proxy in "
                                                 f"{self.timeout_s:.0f} s")
                        if not told and self._unpolled(now, item):
                            told = True
                            self._notify(self.on_wait, request.run_id)
                            continue  # the callback let go of the lock: look again
                        # Wake at the deadline, or in time to see the host is not polling.
                        wake = deadline if told else min(deadline, now + self.unpolled_s / 4)
                        self._cond.wait(timeout=max(0.01, wake - now))
                finally:
                    self._waiting.pop(request.fetch_id, None)
                assert item.result is not None
                return item.result
        finally:
            if told:  # answered or given up: the run is no longer waiting on the host
                self._call(self.on_answer, request.run_id)

    def _unpolled(self, now: float, item: _Waiting) -> bool:
        """No host has polled for ``unpolled_s`` while the request is not in a host's hands
        (counted from its queueing at the earliest: a host that polls every few seconds
        is fine)."""
        in_hands = item.handed_at is not None and now - item.handed_at <= self.lease_s
        since = max(item.queued_at, self._last_poll or item.queued_at)
        return not in_hands and now - since > self.unpolled_s

    def _notify(self, callback: Callable[[str], None] | None, run_id: str) -> None:
        """``callback`` run with the lock let go: it writes the run's folder, and a poll
        or an answer must not wait on that."""
        self._cond.release()
        try:
            self._call(callback, run_id)
        finally:
            self._cond.acquire()

    @staticmethod
    def _call(callback: Callable[[str], None] | None, run_id: str) -> None:
        if callback is None:
            return
        try:
            callback(run_id)
        except Exception:  # the run's bookkeeping must not fail its fetch
            log.exception("research: fetch broker callback failed")

    # -- the host's side --------------------------------------------------------------------

    def pending(self, wait_s: float = 0.0) -> list[FetchRequest]:
        """The requests to fetch now, waiting up to ``wait_s`` (at most 30 s) for one.

        Each request is handed out once; again only when its lease ran out unanswered.
        """
        wait_s = min(max(wait_s, 0.0), MAX_POLL_WAIT_S)
        deadline = self._clock() + wait_s
        with self._cond:
            while True:
                now = self._clock()
                self._last_poll = now
                due = [w for w in self._waiting.values() if self._due(w, now)]
                if due or now >= deadline:
                    for w in due:
                        w.handed_at = now
                    return [w.request for w in due]
                self._cond.wait(timeout=min(deadline - now, 1.0))

    def _due(self, item: _Waiting, now: float) -> bool:
        """Not answered, not abandoned, and in no host's hands (never, or lease ran out)."""
        if item.result is not None or item.abandoned:
            return False
        return item.handed_at is None or now - item.handed_at > self.lease_s

    def answer(self, fetch_id: str, result: FetchResult) -> bool:
        """Deliver the host's answer; False for an id nobody waits for (unknown or timed out)."""
        with self._cond:
            item = self._waiting.get(fetch_id)
            if item is None or item.result is not None:
                return False
            item.result = result
            self._cond.notify_all()
            return True

    def abandon(self, run_id: str) -> int:
        """Stop the run's waits (it was cancelled): each raises ``Cancelled``. Returns how many."""
        with self._cond:
            items = [w for w in self._waiting.values()
                     if w.request.run_id == run_id and w.result is None]
            for w in items:
                w.abandoned = True
            self._cond.notify_all()
            return len(items)

    @property
    def waiting(self) -> int:
        """Requests queued and not answered yet."""
        with self._cond:
            return sum(1 for w in self._waiting.values() if w.result is None)
