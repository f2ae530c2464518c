"""One model per VM: requests run one at a time behind a bounded queue.

A request is admitted if fewer than ``1 + max_queue`` are running or waiting;
otherwise it is refused at once (HTTP 503) rather than left hanging.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class QueueFull(RuntimeError):
    """More requests than the model's slot plus the queue can hold."""


class RequestGate:
    def __init__(self, max_queue: int) -> None:
        self.capacity = max_queue + 1
        self._admitted = 0
        self._count_lock = threading.Lock()
        self._slot = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Requests running or waiting."""
        return self._admitted

    def enter(self) -> None:
        """Admit (or raise ``QueueFull``), then wait for the model slot."""
        with self._count_lock:
            if self._admitted >= self.capacity:
                raise QueueFull(
                    f"agent busy: {self._admitted} request(s) running or queued and the queue "
                    f"holds {self.capacity - 1}; retry later"
                )
            self._admitted += 1
        self._slot.acquire()

    def leave(self) -> None:
        # threading.Lock may be released by another thread: a stream is entered
        # by the request's thread and left by the one that finishes the stream.
        self._slot.release()
        with self._count_lock:
            self._admitted -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()


class GatedStream:
    """Iterate ``inner`` and leave the gate exactly once: at the end, on error or when dropped.

    ``__del__`` covers a response that is never iterated (client gone before
    the first chunk), which a generator's ``finally`` would not.
    """

    def __init__(self, inner: Iterator[str], gate: RequestGate) -> None:
        self._inner = inner
        self._gate: RequestGate | None = gate

    def _release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.leave()

    def __iter__(self) -> GatedStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._inner)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        self._release()

    def __del__(self) -> None:
        self._release()
