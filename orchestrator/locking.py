"""One mutating operation at a time per Somnus home, across processes and threads.

An ``flock`` on ``home/.lock``: processes (CLI commands, the settle worker, the API
server) and threads (the API's operations) each take it through their own open
file, so they exclude one another. It is re-entrant within a thread, so a swap can
create or reconcile while holding it.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class HomeLock:
    """The home's lock; share one instance, each thread keeps its own depth."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @property
    def held(self) -> bool:
        """True when this thread holds the lock."""
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def __call__(self, wait: bool = True) -> Iterator[bool]:
        """Hold the lock for the block; with ``wait=False`` yield False at once if taken."""
        if self.held:
            self._local.depth += 1
            try:
                yield True
            finally:
                self._local.depth -= 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            self._local.depth = 1
            try:
                yield True
            finally:
                self._local.depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)
