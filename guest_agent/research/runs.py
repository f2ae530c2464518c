"""The research VM's runs: queued, run one at a time, cancelled, resumed, recovered.

Each run lives in its own folder under ``research/runs`` (``RunFolder``: the request, the
view, the events, the stages done, the report). One worker thread runs the queue in
order: the VM has one model, which serves one call at a time anyway.

Writes to a run's folder come from one thread at a time: the worker while the run
runs (the pipeline, and the fetch broker's callbacks, which run in the pipeline's
thread), the caller's thread while it is queued or stopped. Cancelling a running run
only raises its flag; the pipeline sees it between steps and stops with ``Cancelled``.

A run whose status is not finished when the agent starts was cut short (the agent or
the VM died, or the VM was saved mid-run): ``recover`` queues it again and it continues
from the stages its folder holds.
"""

from __future__ import annotations

import builtins
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from guest_agent.protocol.research import (
    FINISHED,
    RESEARCH_ID_RE,
    ResearchEvent,
    ResearchEventKind,
    ResearchReport,
    ResearchRequest,
    ResearchRunView,
    ResearchStatus,
    StopReason,
)
from guest_agent.research.folder import Cancelled, RunFolder
from guest_agent.research.modes import BadResearchRequest

log = logging.getLogger(__name__)

WAITING_MESSAGE = ("waiting for the host's fetch proxy: follow the run with "
                   "'somnus research status {run_id} --follow' or run 'somnus serve'")


class RunNotFound(KeyError):
    """No research run has that id."""


class RunConflict(RuntimeError):
    """The run exists already, or is in a state that refuses the action (HTTP 409)."""


class Runnable(Protocol):
    """What the worker needs of a pipeline."""

    def run(self) -> object: ...


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: what a run's ``error`` shows."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class ResearchRuns:
    """The run queue and its worker.

    ``make_pipeline(folder)`` builds the pipeline that runs (or resumes) a run;
    ``check(request)`` refuses a request before it is queued (``BadResearchRequest``;
    anything else it raises becomes one); ``on_cancel(run_id)`` is told a running run was
    cancelled (the fetch broker stops its waits).
    """

    def __init__(self, root: Path, make_pipeline: Callable[[RunFolder], Runnable],
                 check: Callable[[ResearchRequest], None] | None = None,
                 on_cancel: Callable[[str], object] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.make_pipeline = make_pipeline
        self.check = check
        self.on_cancel = on_cancel
        self.clock = clock
        self._cond = threading.Condition()
        self._folders: dict[str, RunFolder] = {}  # one instance per run: they share its lock
        self._queue: list[str] = []
        self._current: str | None = None
        self._closing = False
        self._worker: threading.Thread | None = None

    # -- folders ----------------------------------------------------------------------------

    def _folder(self, run_id: str) -> RunFolder:
        """The run's folder (raises ``RunNotFound``)."""
        with self._cond:
            folder = self._folders.get(run_id)
            if folder is not None:
                return folder
            folder = RunFolder(self.root / run_id) if RESEARCH_ID_RE.match(run_id) else None
            if folder is None or not folder.exists():
                raise RunNotFound(f"no research run '{run_id}': 'somnus research list' "
                                  f"shows them")
            self._folders[run_id] = folder
            return folder

    def _set_status(self, folder: RunFolder, status: ResearchStatus, message: str,
                    **fields: object) -> ResearchRunView:
        """Record a status change: the event first, so that a follower that sees the run
        finished has its last event already."""
        folder.emit(ResearchEventKind.STATUS, message, status=status.value)
        return folder.update(status=status, **fields)

    # -- the API ----------------------------------------------------------------------------

    def start(self, request: ResearchRequest) -> ResearchRunView:
        """Create the run's folder and queue it (``RunConflict``: the id is taken)."""
        if self.check is not None:
            try:
                self.check(request)
            except BadResearchRequest:
                raise
            except Exception as exc:  # whatever the check raised: one line, as a 400
                raise BadResearchRequest(one_line(exc)) from exc
        with self._cond:
            path = self.root / request.run_id
            if request.run_id in self._folders or path.exists():
                raise RunConflict(f"research run '{request.run_id}' exists: see it with "
                                  f"'somnus research status {request.run_id}', or pick "
                                  f"another id")
            path.mkdir(parents=True)
            folder = self._folders[request.run_id] = RunFolder(path)
            try:
                view = folder.create(request, self.clock())
            except BaseException:
                del self._folders[request.run_id]
                shutil.rmtree(path, ignore_errors=True)
                raise
            self._queue.append(request.run_id)
            self._cond.notify_all()
        return view

    def list(self) -> list[ResearchRunView]:
        """Every run, newest first (a folder that does not read is left out, and logged)."""
        views = []
        for path in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not path.is_dir() or not RESEARCH_ID_RE.match(path.name):
                continue
            try:
                views.append(self._folder(path.name).view())
            except Exception as exc:
                log.warning("research: run folder %s does not read: %s", path, one_line(exc))
        return sorted(views, key=lambda v: v.created_at, reverse=True)

    def view(self, run_id: str) -> ResearchRunView:
        folder = self._folder(run_id)
        try:
            return folder.view()
        except FileNotFoundError:
            raise RunNotFound(f"no research run '{run_id}'") from None

    def events(self, run_id: str, after: int = 0) -> builtins.list[ResearchEvent]:
        """The run's events numbered after ``after``."""
        return self._folder(run_id).events(after)

    def follow(self, run_id: str, after: int = 0, poll_s: float = 0.5,
               keepalive_s: float | None = None) -> Iterator[ResearchEvent | None]:
        """The run's events after ``after`` as they come, until it has finished and every
        event is out. With ``keepalive_s`` a ``None`` comes after that long without one
        (a stream's keepalive)."""
        folder = self._folder(run_id)
        quiet_since = time.monotonic()
        finished_seen = False
        while True:
            finished = folder.view().status in FINISHED
            new = folder.events(after)
            for event in new:
                yield event
                after = event.seq
            now = time.monotonic()
            if new:
                quiet_since = now
            elif finished and finished_seen:
                # Finished on two looks in a row with nothing new between: whatever wrote
                # the status has written its events too.
                return
            finished_seen = finished and not new
            if keepalive_s is not None and now - quiet_since >= keepalive_s:
                quiet_since = now
                yield None
            if not (finished and not new):
                time.sleep(poll_s)

    def cancel(self, run_id: str) -> ResearchRunView:
        """Cancel a run: a queued (or cut short) one at once, a running one at its next
        step. A finished run is left as it is."""
        folder = self._folder(run_id)
        with self._cond:
            view = folder.view()
            if view.status in FINISHED:
                return view
            if run_id == self._current:
                folder.request_cancel()
                running = True
            else:
                if run_id in self._queue:
                    self._queue.remove(run_id)
                running = False
        if running:
            if self.on_cancel is not None:
                self.on_cancel(run_id)
            return folder.view()
        return self._set_status(folder, ResearchStatus.CANCELLED, "cancelled before it ran on",
                                stop_reason=StopReason.CANCELLED)

    def resume(self, run_id: str) -> ResearchRunView:
        """Queue a stopped run again; it continues from the stages it had done."""
        folder = self._folder(run_id)
        with self._cond:
            view = folder.view()
            if view.status is ResearchStatus.COMPLETED:
                raise RunConflict(f"research run '{run_id}' already completed: its report is "
                                  f"'somnus research report {run_id}'")
            if run_id == self._current or run_id in self._queue:
                raise RunConflict(f"research run '{run_id}' is "
                                  f"{'running' if run_id == self._current else 'queued'} "
                                  f"already")
            self._queue.append(run_id)
            folder.clear_cancel()
            view = self._set_status(folder, ResearchStatus.PLANNING, "resumed", error=None,
                                    stop_reason=None)
            self._cond.notify_all()
        return view

    def report(self, run_id: str) -> ResearchReport:
        """The run's report (``RunConflict`` while it runs, or when it stopped without one)."""
        folder = self._folder(run_id)
        view = folder.view()
        if view.status not in FINISHED:
            at = f"at stage '{view.stage.value}'" if view.stage else "queued"
            raise RunConflict(f"research run '{run_id}' is {at} ({view.status.value}): follow "
                              f"it with 'somnus research status {run_id} --follow'")
        report = folder.report()
        if report is None:
            why = view.error or view.status.value
            raise RunConflict(f"research run '{run_id}' has no report ({why}): "
                              f"'somnus research resume {run_id}' continues it")
        return report

    # -- the fetch broker's callbacks (in the running pipeline's thread) ---------------------

    def waiting(self, run_id: str) -> None:
        """The run waits for the host's fetch proxy, and no host is polling."""
        folder = self._folder(run_id)
        folder.emit(ResearchEventKind.WAITING, WAITING_MESSAGE.format(run_id=run_id))
        folder.update(status=ResearchStatus.PAUSED)

    def waited(self, run_id: str) -> None:
        """The wait ended (answered, or given up on)."""
        folder = self._folder(run_id)
        if folder.view().status is ResearchStatus.PAUSED:
            self._set_status(folder, ResearchStatus.ACTIVE, "no longer waiting for the host")

    # -- the worker -------------------------------------------------------------------------

    def recover(self) -> builtins.list[str]:
        """Queue the runs a stop cut short (at agent boot), and start the worker.
        Returns their ids, oldest first."""
        queued = []
        for view in sorted(self.list(), key=lambda v: v.created_at):
            if view.status in FINISHED:
                continue
            folder = self._folder(view.run_id)
            with self._cond:
                if view.run_id in self._queue or view.run_id == self._current:
                    continue
                if folder.cancel_requested():  # cancelled, and stopped before it saw it
                    self._set_status(folder, ResearchStatus.CANCELLED, "cancelled",
                                     stop_reason=StopReason.CANCELLED)
                    continue
                self._set_status(folder, ResearchStatus.PLANNING, "resumed after a restart")
                self._queue.append(view.run_id)
                queued.append(view.run_id)
        self.start_worker()
        return queued

    def start_worker(self) -> None:
        with self._cond:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="research-runs",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()

    @property
    def current(self) -> str | None:
        """The run the worker is running."""
        return self._current

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                run_id = self._current = self._queue.pop(0)
            try:
                self._execute(run_id)
            except Exception:  # the worker outlives any run
                log.exception("research: run %s: bookkeeping failed", run_id)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _execute(self, run_id: str) -> None:
        folder = self._folder(run_id)
        if folder.cancel_requested():
            self._set_status(folder, ResearchStatus.CANCELLED, "cancelled",
                             stop_reason=StopReason.CANCELLED)
            return
        try:
            self.make_pipeline(folder).run()
        except Cancelled:
            if not self._closing:
                self._set_status(folder, ResearchStatus.CANCELLED, "cancelled",
                                 stop_reason=StopReason.CANCELLED)
            return
        except Exception as exc:
            if self._closing:  # the agent is stopping under it: resumed at the next boot
                log.info("research: run %s stopped by the agent's shutdown: %s", run_id,
                         one_line(exc))
                return
            log.exception("research: run %s failed", run_id)
            self._set_status(folder, ResearchStatus.ERROR, "failed", error=one_line(exc),
                             stop_reason=StopReason.ERROR)
            return
        if folder.view().status not in FINISHED:  # the pipeline left the status to us
            self._set_status(folder, ResearchStatus.COMPLETED, "completed")

    def close(self) -> None:
        """Stop taking runs. A run in progress is not waited for: it is resumed at the next
        boot (its folder holds the stages it finished)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
