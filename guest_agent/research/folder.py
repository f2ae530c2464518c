"""One research run's state on disk: a folder the run resumes from.

    request.json      the ResearchRequest, as posted
    state.json        the ResearchRunView (status, stage, usage, …), rewritten atomically
    events.jsonl      one ResearchEvent per line, ``seq`` from 1
    stages/<key>.json each completed stage's value ("brief", "queries-1", …, "report")
    report.json       the finished ResearchReport
    budget.json       which hard budgets were reached (they stay reached across restarts)
    cancel            present while a cancel is requested

Every file but events.jsonl is written whole to a temporary file and renamed over the
old one, so a crash leaves the old version or the new one, never half of one. A torn
last event line (a crash mid-append) is skipped when read and sealed before the next
append.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from guest_agent.protocol.research import (
    ResearchEvent,
    ResearchEventKind,
    ResearchReport,
    ResearchRequest,
    ResearchRunView,
    ResearchStage,
    ResearchStatus,
    Scalar,
)

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

REQUEST_FILE = "request.json"
STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
REPORT_FILE = "report.json"
CANCEL_FILE = "cancel"
STAGES_DIR = "stages"
TAIL_BYTES = 64 * 1024  # enough to hold the last event line



class _Shared:
    """What every RunFolder of one path shares: the run manager and the pipeline may each
    hold one for the same run, and both write state and events."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.seq: int | None = None  # read from events.jsonl on first use


_SHARED: dict[Path, _Shared] = {}
_SHARED_GUARD = threading.Lock()


class Cancelled(Exception):
    """The run's cancel flag was seen; the run manager marks the run CANCELLED."""


def _shared(path: Path) -> _Shared:
    with _SHARED_GUARD:
        return _SHARED.setdefault(path.resolve(), _Shared())


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stage_of(key: str) -> ResearchStage | None:
    """The ResearchStage a stage key belongs to ("notes-2" → NOTES, "compress-1" → NOTES)."""
    name = key.split("-", 1)[0]
    if name == "compress":  # compressing a round's notes is the end of its notes stage
        return ResearchStage.NOTES
    try:
        return ResearchStage(name)
    except ValueError:
        return None


class RunFolder:
    """A run's persisted state; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._shared = _shared(path)
        self._lock = self._shared.lock

    # -- files -----------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def _stage_path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad stage key {key!r}: use names like 'notes-1'")
        return self.path / STAGES_DIR / f"{key}.json"

    def write_json(self, name: str, value: BaseModel) -> None:
        """Write one of the run's small files atomically."""
        with self._lock:
            atomic_write(self.path / name, value.model_dump_json(indent=1))

    def read_json(self, name: str, model: type[T]) -> T | None:
        """One of the run's small files, or None when missing or unreadable."""
        path = self.path / name
        try:
            return model.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError, OSError) as exc:
            log.warning("research %s: %s is unreadable (%s); ignoring it",
                        self.run_id, name, str(exc).splitlines()[0])
            return None

    # -- request and state -----------------------------------------------------------

    def create(self, request: ResearchRequest, now: float) -> ResearchRunView:
        """Start the folder of a new run (status PLANNING)."""
        with self._lock:
            # A run deleted and created again under the same id starts its events afresh.
            self._shared.seq = None
            (self.path / STAGES_DIR).mkdir(parents=True, exist_ok=True)
            atomic_write(self.path / REQUEST_FILE, request.model_dump_json(indent=1))
            view = ResearchRunView(run_id=request.run_id, request=request,
                                   status=ResearchStatus.PLANNING, created_at=now,
                                   updated_at=now, last_event=self._next_seq() - 1)
            atomic_write(self.path / STATE_FILE, view.model_dump_json(indent=1))
            return view

    def request(self) -> ResearchRequest:
        return ResearchRequest.model_validate_json(
            (self.path / REQUEST_FILE).read_text(encoding="utf-8"))

    def view(self) -> ResearchRunView:
        with self._lock:
            return ResearchRunView.model_validate_json(
                (self.path / STATE_FILE).read_text(encoding="utf-8"))

    def update(self, **fields: Any) -> ResearchRunView:
        """Change fields of the run's view (validated), stamping ``updated_at``."""
        with self._lock:
            unknown = set(fields) - set(ResearchRunView.model_fields)
            if unknown:
                raise ValueError(f"ResearchRunView has no field {sorted(unknown)[0]!r}")
            current = self.view()
            data = {**dict(current), **fields, "updated_at": time.time()}
            view = ResearchRunView.model_validate(data)
            atomic_write(self.path / STATE_FILE, view.model_dump_json(indent=1))
            return view

    # -- events ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        """Reserve the next event number (call under the lock)."""
        if self._shared.seq is None:
            self._shared.seq = self._last_seq()
        return self._shared.seq + 1

    def _last_seq(self) -> int:
        """The seq of the last readable event (0 without events): numbering continues."""
        path = self.path / EVENTS_FILE
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return 0
        for line in reversed(tail.splitlines()):
            try:
                return int(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line, or the cut-off start of the tail
        return max((e.seq for e in self.events()), default=0) if size > TAIL_BYTES else 0

    def emit(self, kind: ResearchEventKind, message: str = "",
             stage: ResearchStage | None = None, **data: Scalar) -> ResearchEvent:
        """Append one event (``seq`` one more than the last) and note it in the view."""
        with self._lock:
            seq = self._next_seq()
            event = ResearchEvent(seq=seq, at=time.time(), kind=kind, stage=stage,
                                  message=message, data=data)
            path = self.path / EVENTS_FILE
            with path.open("a+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end > 0:
                    f.seek(end - 1)
                    if f.read(1) != b"\n":
                        f.write(b"\n")  # seal a line torn by a crash
                f.write(event.model_dump_json().encode() + b"\n")
            self._shared.seq = seq
            self.update(last_event=seq)
            return event

    def events(self, after: int = 0) -> list[ResearchEvent]:
        """The events with ``seq`` > ``after``, in order."""
        try:
            lines = (self.path / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[ResearchEvent] = []
        # Event n is on line n or later (a torn line only pushes events down), so the
        # first ``after`` lines hold nothing wanted: a follower polling twice a second
        # parses only what is new, not the whole log.
        for line in lines[after:]:
            if not line.strip():
                continue
            try:
                event = ResearchEvent.model_validate_json(line)
            except ValidationError:
                log.warning("research %s: skipping a torn event line", self.run_id)
                continue
            if event.seq > after:
                out.append(event)
        return out

    # -- stages ----------------------------------------------------------------------

    def save_stage(self, key: str, value: BaseModel) -> None:
        """Persist a completed stage and add it to ``stages_done``."""
        with self._lock:
            path = self._stage_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, value.model_dump_json(indent=1))
            done = self.view().stages_done
            if key not in done:
                self.update(stages_done=[*done, key])

    def load_stage(self, key: str, model: type[T]) -> T | None:
        """A completed stage's value; None when not done (or corrupt: it is done again)."""
        path = self._stage_path(key)
        try:
            return model.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as exc:
            log.warning("research %s: stage %s is corrupt (%s); doing it again",
                        self.run_id, key, str(exc).splitlines()[0])
            return None

    # -- cancel and report -----------------------------------------------------------

    def request_cancel(self) -> None:
        (self.path / CANCEL_FILE).touch()

    def cancel_requested(self) -> bool:
        return (self.path / CANCEL_FILE).exists()

    def clear_cancel(self) -> None:
        (self.path / CANCEL_FILE).unlink(missing_ok=True)

    def write_report(self, report: ResearchReport) -> None:
        self.write_json(REPORT_FILE, report)

    def report(self) -> ResearchReport | None:
        return self.read_json(REPORT_FILE, ResearchReport)

