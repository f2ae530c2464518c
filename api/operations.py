"""Long operations in worker threads, at most one at a time per VM (or other key).

A request that starts one gets its id at once (202); the operation's progress
lines, result and error are kept in memory for polling and for server-sent events.
A second operation on a key that is busy is refused (Conflict, 409) rather than
interleaved; quick mutations claim the key for their duration the same way.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from api.models import ErrorBody, error_body
from core.errors import Conflict, NotFound
from core.types import Progress
from orchestrator.models import utcnow

Work = Callable[[Progress], Any]
# Called with (key, kind, exception) when work fails; records VM errors.
FailureHook = Callable[[str, str, BaseException], None]
log = logging.getLogger(__name__)


class OperationState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class OperationView(BaseModel):
    """What ``GET /operations/{id}`` returns."""

    id: str
    kind: str
    target: str
    state: OperationState
    created_at: datetime
    finished_at: datetime | None
    progress: list[str]
    result: dict[str, Any] | None
    error: ErrorBody | None


class Operation:
    """One operation's record; its fields change under its condition variable."""

    def __init__(self, kind: str, target: str) -> None:
        self.id = uuid.uuid4().hex
        self.kind = kind
        self.target = target
        self.state = OperationState.RUNNING
        self.created_at = utcnow()
        self.finished_at: datetime | None = None
        self.lines: list[str] = []
        self.result: dict[str, Any] | None = None
        self.error: ErrorBody | None = None
        self._changed = threading.Condition()

    def log(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def finish(self, result: dict[str, Any] | None, error: ErrorBody | None) -> None:
        with self._changed:
            self.result, self.error = result, error
            self.state = OperationState.FAILED if error else OperationState.SUCCEEDED
            self.finished_at = utcnow()
            self._changed.notify_all()

    @property
    def done(self) -> bool:
        return self.state is not OperationState.RUNNING

    def view(self) -> OperationView:
        with self._changed:
            return OperationView(id=self.id, kind=self.kind, target=self.target,
                                 state=self.state, created_at=self.created_at,
                                 finished_at=self.finished_at, progress=list(self.lines),
                                 result=self.result, error=self.error)

    def updates(self, seen: int = 0,
                heartbeat_s: float = 5.0) -> Iterator[tuple[int, str | None]]:
        """Progress lines from index ``seen`` on, as they come, until the operation ends;
        ``(seen, None)`` after each quiet ``heartbeat_s`` (streams check for gone clients)."""
        while True:
            with self._changed:
                if len(self.lines) <= seen and not self.done:
                    self._changed.wait(heartbeat_s)
                fresh = self.lines[seen:]
                finished = self.done
            if not fresh and not finished:
                yield seen, None
            for line in fresh:
                yield seen, line
                seen += 1
            if finished:
                return


class OperationRegistry:
    """The operations of one API process; finished ones are kept for polling (bounded)."""

    def __init__(self, on_failure: FailureHook | None = None, keep: int = 500) -> None:
        self.on_failure = on_failure
        self.keep = keep
        self._lock = threading.Lock()
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._busy: dict[str, str] = {}  # key -> what holds it ("operation <id> (<kind>)")

    def _claim(self, key: str, holder: str) -> None:
        with self._lock:
            if key in self._busy:
                raise Conflict(f"'{key}' is busy: {self._busy[key]} is in progress; "
                               "retry when it has finished")
            self._busy[key] = holder

    def _release(self, key: str) -> None:
        with self._lock:
            self._busy.pop(key, None)

    def start(self, kind: str, key: str, work: Work) -> Operation:
        """Run ``work(progress)`` in a thread; its return value (a dict) becomes the result."""
        op = Operation(kind, key)
        self._claim(key, f"operation {op.id} ({kind})")
        with self._lock:
            self._ops[op.id] = op
            while len(self._ops) > self.keep:
                oldest = next(iter(self._ops.values()))
                if not oldest.done:
                    break
                self._ops.popitem(last=False)
        threading.Thread(target=self._run, args=(op, key, work), daemon=True,
                         name=f"op-{kind}-{key}").start()
        return op

    def _run(self, op: Operation, key: str, work: Work) -> None:
        try:
            result = work(op.log)
        except BaseException as exc:  # reported in the operation, never lost in a thread
            self._failed(key, op.kind, exc)
            op.finish(None, error_body(exc))
        else:
            op.finish(result, None)
        finally:
            self._release(key)

    @contextmanager
    def claimed(self, kind: str, key: str) -> Iterator[None]:
        """Hold ``key`` while a quick mutation runs in the caller's thread."""
        self._claim(key, kind)
        try:
            yield
        except BaseException as exc:
            self._failed(key, kind, exc)
            raise
        finally:
            self._release(key)

    def _failed(self, key: str, kind: str, exc: BaseException) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(key, kind, exc)
        except Exception:  # recording must never hide the failure it records
            log.exception("could not record the failure of %s on %s", kind, key)

    def get(self, op_id: str) -> Operation:
        with self._lock:
            op = self._ops.get(op_id)
        if op is None:
            raise NotFound(f"no operation '{op_id}' (finished ones are kept until restart)")
        return op

    def recent(self) -> list[Operation]:
        """Every kept operation, newest first."""
        with self._lock:
            return list(reversed(self._ops.values()))

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no operation runs (shutdown, tests); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not any(not op.done for op in self._ops.values()) and not self._busy:
                    return True
            time.sleep(0.05)
        return False
