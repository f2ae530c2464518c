"""Artifacts as the CLI and the API offer them: create, version, run in the artifacts VM.

A run goes to the agent of the artifacts VM (``somnus vm create artifacts
--subsystem artifacts``; brought up beside the foreground VM when it is not
running: ``SwapEngine.overlay``), which runs it in a
fresh sandbox (``guest_agent.sandbox``) and streams its events back. The host
appends every event to ``<home>/artifacts/runs/<id>/events.jsonl`` as it comes,
downloads the files the run produced into ``files/`` and records the outcome, so
``somnus artifact logs RUN`` works after the VM is gone.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from core.errors import Conflict, GuestError, InvalidInput, NotFound
from core.types import Progress
from guest_agent.protocol import MemoryCreate, MemoryImportance, MemoryType, Subsystem
from guest_agent.protocol.runs import (
    SOURCE_SUFFIXES,
    Language,
    RunEvent,
    RunEventKind,
    RunOutcome,
    RunRequest,
    RunResult,
    SourceFile,
    WebMode,
    WebRequest,
    WebStatus,
)
from orchestrator.agent_client import AgentClient
from orchestrator.artifacts.export import (
    SUFFIX,
    ExportFormat,
    export_entries,
    single_html,
    write_export,
)
from orchestrator.artifacts.repotests import (
    TEST_LIMITS,
    TEST_SCRIPT,
    detect_test_command,
    runner_script,
)
from orchestrator.artifacts.sources import (
    check_artifact_name,
    dump_files,
    merge_limits,
    pick_entry,
    source_file,
)
from orchestrator.artifacts.tables import (
    ArtifactKind,
    ArtifactRow,
    ArtifactRunRow,
    ArtifactStatus,
    ArtifactStore,
    ArtifactVersionRow,
)
from orchestrator.devsessions import DevSessionManager
from orchestrator.devsessions.fences import Fence, parse_fences
from orchestrator.devsessions.languages import normalize_language
from orchestrator.models import VMRecord
from orchestrator.projects import ProjectService
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService

log = logging.getLogger(__name__)
SUMMARY_STDERR_CHARS = 600  # of a failed run's stderr, in its memory
# Produced files copied to the host per run; bigger ones stay in the VM's run folder.
FETCH_MAX_BYTES = 64 * 1024 * 1024


class ArtifactService:
    """Artifacts and their runs; the runs happen in the artifacts VM."""

    def __init__(self, store: ArtifactStore, vms: VMService, swap: SwapEngine, home: Path,
                 projects: Callable[[], ProjectService] | None = None,
                 sessions: Callable[[], DevSessionManager] | None = None) -> None:
        self.store = store
        self.vms = vms
        self.swap = swap
        self.runs_dir = home / "artifacts" / "runs"
        self._projects = projects
        self._sessions = sessions

    # -- artifacts ------------------------------------------------------------------------

    def create(self, name: str, language: Language, files: list[SourceFile],
               entry: str | None = None, kind: ArtifactKind = ArtifactKind.PROGRAM,
               message: str = "created") -> ArtifactRow:
        check_artifact_name(name)
        if self.store.find(name) is not None:
            raise Conflict(f"an artifact named '{name}' exists already: "
                           f"'somnus artifact update {name} FILES' makes a new version")
        if language is Language.HTML:
            kind = ArtifactKind.WEB  # static pages are opened, never run
        row = ArtifactRow(name=name, kind=kind, language=language,
                          entry=pick_entry(language, files, entry))
        first = ArtifactVersionRow(artifact=name, number=1, files=dump_files(files),
                                   message=message)
        return self.store.add(row, first)

    def from_answer(self, answer: str, name: str | None = None) -> ArtifactRow | None:
        """An artifact from a model answer's code blocks (None if it has no runnable one)."""
        return self.from_blocks(parse_fences(answer), name or f"chat-{new_run_id()}",
                                "from a chat answer")

    def from_session(self, session: str, name: str) -> ArtifactRow:
        """An artifact from a dev session's code blocks, each at its latest version."""
        if self._sessions is None:
            raise Conflict("dev sessions are not wired into this host")
        manager = self._sessions()
        sid = manager.resolve_session_id(session)
        blocks = [Fence(b.language, b.content, b.filename)
                  for b in manager.get_session(sid).code_blocks.values()]
        row = self.from_blocks(blocks, name, f"from dev session {str(sid)[:8]}")
        if row is None:
            raise InvalidInput(f"dev session {str(sid)[:8]} has no code in a language "
                               f"Somnus runs ({', '.join(Language)})")
        return row

    def from_blocks(self, fences: list[Fence], name: str, message: str) -> ArtifactRow | None:
        """The first block in a language Somnus runs sets the language; every block of that
        language becomes a file (its own file name, or ``main.<ext>``, ``main2.<ext>``…).
        None when no block is in such a language."""
        blocks = [(Language(lang), fence) for fence in fences
                  if (lang := normalize_language(fence.language)) in set(Language)]
        if not blocks:
            return None
        language = blocks[0][0]
        files: dict[str, SourceFile] = {}
        for block_language, fence in blocks:
            if block_language is not language:
                continue
            suffix = SOURCE_SUFFIXES[language][0]
            path = fence.filename or f"main{len(files) + 1 if files else ''}{suffix}"
            with suppress(ValidationError):  # a file name the sandbox could not take
                files[path] = SourceFile(path=path, content=fence.content)
        if not files:
            return None
        return self.create(name, language, list(files.values()), message=message)

    def update(self, name: str, files: list[SourceFile], message: str = "") -> ArtifactVersionRow:
        """A new version with these files (the earlier ones are kept)."""
        row = self.store.get(name)
        pick_entry(row.language, files, row.entry)  # the entry must still be there
        return self.store.add_version(name, dump_files(files), message)

    def delete(self, name: str) -> None:
        self.store.get(name)
        self.store.delete(name)

    # -- runs -----------------------------------------------------------------------------

    def artifacts_vm(self) -> str:
        """The VM runs go to: the (first) VM of the artifacts subsystem."""
        vms = [vm for vm in self.vms.store.list_vms() if vm.subsystem is Subsystem.ARTIFACTS]
        if not vms:
            raise Conflict("no artifacts VM: create it with "
                           "'somnus vm create artifacts --subsystem artifacts'")
        return vms[0].name

    def _vm_up(self, progress: Progress | None) -> VMRecord:
        """The artifacts VM, running: brought up beside the foreground VM if need be."""
        name = self.artifacts_vm()
        record = self.vms.store.get_vm(name)
        if not self.vms.hv.is_running(record.domain_name):
            self.swap.overlay(name, progress)
            record = self.vms.store.get_vm(name)
        return record

    # -- web artifacts ----------------------------------------------------------------------

    def open(self, name: str, version: int | None = None,
             progress: Progress | None = None) -> tuple[str, WebStatus]:
        """Serve a web artifact from the artifacts VM (in place of the one open) while the
        foreground VM keeps running; its URL on the host's loopback, and its status."""
        artifact = self.store.get(name)
        if artifact.kind is not ArtifactKind.WEB:
            raise Conflict(f"'{name}' is a {artifact.kind}, not a web artifact: make one with "
                           "'somnus artifact create NAME --kind web …'")
        chosen = self.store.version(name, version)
        request = WebRequest(run_id=new_run_id("web-"), language=artifact.language,
                             files=chosen.sources(), entry=artifact.entry,
                             limits=merge_limits(artifact.language, {}, web=True))
        record = self._vm_up(progress)
        status = self.vms.agent(record).web_open(request)
        url = web_url(record, artifact.entry if status.mode is WebMode.STATIC else "")
        self._web_file.parent.mkdir(parents=True, exist_ok=True)
        self._web_file.write_text(json.dumps({"artifact": name, "run_id": status.run_id,
                                              "url": url}))
        return url, status

    @property
    def _web_file(self) -> Path:
        """Which artifact is open on the web port (the agent knows only its run id)."""
        return self.runs_dir.parent / "open-web.json"

    def close(self, name: str | None = None, progress: Progress | None = None) -> WebStatus:
        """Stop serving the open web artifact (``name``: only if it is that one)."""
        if name is not None:
            try:
                opened = json.loads(self._web_file.read_text())["artifact"]
            except (OSError, ValueError, KeyError):
                opened = None
            if opened != name:
                raise NotFound(f"'{name}' is not the open web artifact"
                               + (f" ('{opened}' is)" if opened else ""))
        record = self.vms.store.get_vm(self.artifacts_vm())
        if not self.vms.hv.is_running(record.domain_name):
            raise NotFound("no web artifact is open: the artifacts VM is not running")
        status = self.vms.agent(record).web_stop()
        self._web_file.unlink(missing_ok=True)
        return status

    def run(self, name: str, version: int | None = None, stdin: str = "",
            args: list[str] | None = None, limits: dict[str, object] | None = None,
            progress: Progress | None = None) -> Iterator[RunEvent]:
        """Run a version (default: the latest) and yield its events; the last is the result.

        Refusals (unknown artifact, bad limits, no artifacts VM) raise before any event.
        """
        artifact = self.store.get(name)
        if artifact.language is Language.HTML:
            raise Conflict(f"'{name}' is a static web artifact: 'somnus artifact open {name}' "
                           "serves it")
        chosen = self.store.version(name, version)
        request = RunRequest(run_id=new_run_id(), language=artifact.language,
                             files=chosen.sources(), entry=artifact.entry, args=args or [],
                             stdin=stdin, limits=merge_limits(artifact.language, limits or {}))
        record = self._vm_up(progress)
        agent = self.vms.agent(record)
        events = agent.run_stream(request)
        first = next(events)  # the agent refuses (busy, no sandbox) before its first event
        run = self.store.save_run(ArtifactRunRow(id=request.run_id, artifact=name,
                                                 version=chosen.number, vm_name=record.name))
        self.store.set_status(name, ArtifactStatus.EXECUTING)
        return self._record(run, first, events, agent)

    def _record(self, run: ArtifactRunRow, first: RunEvent, events: Iterator[RunEvent],
                agent: AgentClient) -> Iterator[RunEvent]:
        folder = self.run_dir(run.id)
        folder.mkdir(parents=True, exist_ok=True)
        result: RunResult | None = None
        with (folder / "events.jsonl").open("a") as log:
            for event in _chain(first, events):
                log.write(event.model_dump_json(exclude_none=True) + "\n")
                log.flush()
                if event.kind is RunEventKind.RESULT:
                    result = event.result
                yield event
        if result is None:
            result = RunResult(outcome=RunOutcome.ERROR, duration_s=0.0,
                               error="the run's event stream ended without a result")
        self._fetch_files(run.id, result, agent)
        self._remember(agent, run, result)
        run.outcome, run.limit, run.duration_s = result.outcome, result.limit, result.duration_s
        run.exit_code, run.signal = result.exit_code, result.signal
        run.result = result.model_dump_json()
        run.finished_at = datetime.now(UTC)
        self.store.save_run(run)
        ok = result.outcome is RunOutcome.OK
        self.store.set_status(run.artifact,
                              ArtifactStatus.COMPLETED if ok else ArtifactStatus.ERROR)

    def _remember(self, agent: AgentClient, run: ArtifactRunRow, result: RunResult) -> None:
        """The run's summary as a memory of the artifacts VM, so the model sees next time
        what ran and how it ended (best effort: stored now, embedded in the background)."""
        memory = MemoryCreate(
            content=run_summary(run, result, self.events(run.id)),
            memory_type=MemoryType.TOOL_RESULT, importance=MemoryImportance.LOW,
            tags=["artifact-run", run.artifact],
            metadata={"artifact": run.artifact, "version": run.version, "run_id": run.id,
                      "outcome": result.outcome.value})  # fmt: skip
        try:
            agent.memory_add(memory, background=True)
        except GuestError as exc:
            log.warning("run %s: summary not stored as a memory: %s", run.id, exc)

    def _fetch_files(self, run_id: str, result: RunResult, agent: AgentClient) -> None:
        files = self.run_dir(run_id) / "files"
        room = FETCH_MAX_BYTES
        for produced in result.files:
            if produced.size > room:  # left in the VM (kept for its last runs)
                continue
            room -= produced.size
            target = files / PurePosixPath(produced.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(agent.run_file(run_id, produced.path))

    # -- a project's tests ------------------------------------------------------------------

    def test_project(self, project: str, command: str | None = None,
                     progress: Progress | None = None) -> Iterator[RunEvent]:
        """Run a project's tests in a sandbox on a copy of its HEAD, as a run of the
        artifact ``<project>-tests`` (a new version per call, so every run is kept)."""
        files = self._project_service().head_files(project, progress)
        command = command or detect_test_command(files)
        sources = [*(source_file(path, data) for path, data in sorted(files.items())),
                   SourceFile(path=TEST_SCRIPT, content=runner_script(command))]
        name = f"{project}-tests"
        message = f"HEAD of project '{project}': {command}"
        if self.store.find(name) is None:
            self.create(name, Language.BASH, sources, TEST_SCRIPT, message=message)
        else:
            self.update(name, sources, message)
        return self.run(name, limits=TEST_LIMITS, progress=progress)

    def _project_service(self) -> ProjectService:
        if self._projects is None:
            raise Conflict("projects are not wired into this host")
        return self._projects()

    # -- exports --------------------------------------------------------------------------

    def _export_entries(self, name: str, version: int | None) -> tuple[int, dict[str, bytes]]:
        artifact = self.store.get(name)
        chosen = self.store.version(name, version)
        runs = [r for r in self.store.runs(name) if r.version == chosen.number]
        last = runs[-1] if runs else None
        produced = self.run_dir(last.id) / "files" if last else None
        return chosen.number, export_entries(artifact, chosen, last, produced)

    def export(self, name: str, fmt: ExportFormat, dest: Path | None = None,
               version: int | None = None) -> Path:
        """Write a version (default: the latest) with its last run's files and a manifest."""
        number, entries = self._export_entries(name, version)
        dest = dest or Path.cwd() / f"{name}-v{number}{SUFFIX[fmt]}"
        if fmt is ExportFormat.HTML:
            artifact = self.store.get(name)
            if artifact.language is not Language.HTML:
                raise Conflict(f"'{name}' is not a static web artifact: export it as zip, "
                               "tar or dir")
            source = {path.removeprefix("source/"): data for path, data in entries.items()
                      if path.startswith("source/")}
            entries = {dest.name: single_html(artifact.entry, source)}
            return write_export(entries, ExportFormat.HTML, dest)
        return write_export(entries, fmt, dest)

    def export_to_project(self, name: str, project: str, version: int | None = None,
                          progress: Progress | None = None) -> str:
        """Commit the export under ``artifacts/<name>/`` in a project's repository (as
        Somnus AI, undoable like any AI commit); the commit's hash."""
        number, entries = self._export_entries(name, version)
        files = {f"artifacts/{name}/{path}": data for path, data in entries.items()}
        message = f"artifact {name} v{number}\n\nExported by Somnus from the artifacts VM."
        return self._project_service().commit_files(project, files, message, progress)

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def produced_file(self, run_id: str, path: str) -> Path:
        """A file a run produced, as copied to the host (refusing paths outside the run)."""
        self.store.run(run_id)
        files = (self.run_dir(run_id) / "files").resolve()
        target = (files / path).resolve()
        if not target.is_relative_to(files) or not target.is_file():
            raise NotFound(f"run '{run_id}' has no produced file '{path}' on the host "
                           "(see its result's files)")
        return target

    def events(self, run_id: str) -> list[RunEvent]:
        """A run's recorded events (``somnus artifact logs``)."""
        self.store.run(run_id)
        log = self.run_dir(run_id) / "events.jsonl"
        if not log.is_file():
            return []
        return [RunEvent.model_validate_json(line) for line in log.read_text().splitlines()
                if line.strip()]


def new_run_id(prefix: str = "") -> str:
    """A run's id: when it started, and 6 random hex digits."""
    return f"{prefix}{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def web_url(record: VMRecord, entry: str = "") -> str:
    """Where the host's browser finds the artifacts VM's open web artifact."""
    if record.web_port is None:
        raise Conflict(f"VM '{record.name}' has no web port (made before web artifacts "
                       "existed): delete and create the artifacts VM again")
    page = "" if entry in ("", "index.html") else entry
    return f"http://127.0.0.1:{record.web_port}/{page}"


def run_summary(run: ArtifactRunRow, result: RunResult, events: list[RunEvent]) -> str:
    """One paragraph: what ran, how it ended, and the error (the end of stderr) if any."""
    how = {
        RunOutcome.OK: "exited 0",
        RunOutcome.FAILED: f"failed ({result.signal or f'exit {result.exit_code}'})",
        RunOutcome.COMPILE_ERROR: "did not compile",
        RunOutcome.LIMIT: f"was stopped by its {result.limit} limit",
        RunOutcome.ERROR: f"could not run: {result.error}",
    }[result.outcome]
    text = f"Run {run.id} of artifact '{run.artifact}' version {run.version} {how}"
    text += f" after {result.duration_s:.2f}s." if result.outcome is not RunOutcome.ERROR else "."
    if result.diagnostics:
        text += " Compiler: " + "; ".join(f"{d.file}:{d.line}: {d.message}"
                                          for d in result.diagnostics[:5])
    elif result.outcome is not RunOutcome.OK:
        stderr = "".join(e.data or "" for e in events if e.kind is RunEventKind.STDERR)
        if tail := stderr.strip()[-SUMMARY_STDERR_CHARS:]:
            text += f" Error output ends: {tail}"
    return text


def _chain(first: RunEvent, rest: Iterator[RunEvent]) -> Iterator[RunEvent]:
    yield first
    yield from rest


