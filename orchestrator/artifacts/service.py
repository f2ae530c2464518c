"""Artifacts as the CLI and the API offer them: create, version, run in the artifacts VM.

A run goes to the agent of the artifacts VM (``somnus vm create artifacts
--subsystem artifacts``; activated when it is not running), which runs it in a
fresh sandbox (``guest_agent.sandbox``) and streams its events back. The host
appends every event to ``<home>/artifacts/runs/<id>/events.jsonl`` as it comes,
downloads the files the run produced into ``files/`` and records the outcome, so
``somnus artifact logs RUN`` works after the VM is gone.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from core.errors import Conflict, InvalidInput
from core.types import Progress
from guest_agent.protocol import Subsystem
from guest_agent.protocol.runs import (
    MAX_SOURCE_BYTES,
    SOURCE_SUFFIXES,
    Language,
    RunEvent,
    RunEventKind,
    RunLimits,
    RunOutcome,
    RunRequest,
    RunResult,
    SourceFile,
    default_limits,
    source_files,
)
from orchestrator.agent_client import AgentClient
from orchestrator.artifacts.tables import (
    ArtifactKind,
    ArtifactRow,
    ArtifactRunRow,
    ArtifactStatus,
    ArtifactStore,
    ArtifactVersionRow,
)
from orchestrator.chat import ChatService

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SKIPPED_DIRS = frozenset({".git", "__pycache__", "node_modules", "target", ".venv"})
# Produced files copied to the host per run; bigger ones stay in the VM's run folder.
FETCH_MAX_BYTES = 64 * 1024 * 1024


def read_sources(paths: list[Path]) -> list[SourceFile]:
    """Files given on the command line: a file by its name, a folder by its contents."""
    found: dict[str, SourceFile] = {}
    total = 0
    for given in paths:
        if not given.exists():
            raise InvalidInput(f"no such file or folder: {given}")
        if given.is_dir():
            items = [(p, p.relative_to(given).as_posix()) for p in sorted(given.rglob("*"))
                     if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(given).parts)]
        else:
            items = [(given, given.name)]
        for path, name in items:
            data = path.read_bytes()
            total += len(data)
            if total > MAX_SOURCE_BYTES:
                raise InvalidInput(f"the artifact's files are over {MAX_SOURCE_BYTES // 2**20} "
                                   "MiB: leave out build output and data sets")
            found[name] = _source(name, data)
    if not found:
        raise InvalidInput("no files given: name a file or a folder with the artifact's code")
    return list(found.values())


def _source(name: str, data: bytes) -> SourceFile:
    try:
        return SourceFile(path=name, content=data.decode())
    except UnicodeDecodeError:
        return SourceFile(path=name, content=base64.b64encode(data).decode(), base64=True)


def pick_entry(language: Language, files: list[SourceFile], entry: str | None) -> str:
    """The file a run starts from: given, the only source file, or ``main.<suffix>``."""
    names = [f.path for f in files]
    if entry is not None:
        if entry not in names:
            raise InvalidInput(f"entry '{entry}' is not one of the files: {', '.join(names)}")
        return entry
    sources = source_files(language, names)
    if len(sources) == 1:
        return sources[0]
    for suffix in SOURCE_SUFFIXES[language]:
        if f"main{suffix}" in sources:
            return f"main{suffix}"
    suffixes = "/".join(SOURCE_SUFFIXES[language])
    raise InvalidInput(f"which file does a {language} run start from? none or several {suffixes} "
                       "files and no main: name it with --entry")


def merge_limits(language: Language, overrides: dict[str, object]) -> RunLimits:
    """The language's defaults with the user's overrides, checked (one-line error)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return RunLimits.model_validate({**default_limits(language).model_dump(), **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"limit {first['loc'][0]}: {first['msg']}") from None


class ArtifactService:
    """Artifacts and their runs; the runs happen in the artifacts VM."""

    def __init__(self, store: ArtifactStore, chat: ChatService, home: Path) -> None:
        self.store = store
        self.chat = chat
        self.runs_dir = home / "artifacts" / "runs"

    # -- artifacts ------------------------------------------------------------------------

    def create(self, name: str, language: Language, files: list[SourceFile],
               entry: str | None = None, kind: ArtifactKind = ArtifactKind.PROGRAM,
               message: str = "created") -> ArtifactRow:
        if not NAME_RE.match(name):
            raise InvalidInput(f"artifact name '{name}': use a-z, 0-9, '.', '_', '-' "
                               "(up to 63, starting with a letter or digit)")
        if self.store.find(name) is not None:
            raise Conflict(f"an artifact named '{name}' exists already: "
                           f"'somnus artifact update {name} FILES' makes a new version")
        row = ArtifactRow(name=name, kind=kind, language=language,
                          entry=pick_entry(language, files, entry))
        first = ArtifactVersionRow(artifact=name, number=1, files=_dump(files), message=message)
        return self.store.add(row, first)

    def update(self, name: str, files: list[SourceFile], message: str = "") -> ArtifactVersionRow:
        """A new version with these files (the earlier ones are kept)."""
        row = self.store.get(name)
        pick_entry(row.language, files, row.entry)  # the entry must still be there
        return self.store.add_version(name, _dump(files), message)

    def delete(self, name: str) -> None:
        self.store.get(name)
        self.store.delete(name)

    # -- runs -----------------------------------------------------------------------------

    def artifacts_vm(self) -> str:
        """The VM runs go to: the (first) VM of the artifacts subsystem."""
        vms = [vm for vm in self.chat.svc.store.list_vms() if vm.subsystem is Subsystem.ARTIFACTS]
        if not vms:
            raise Conflict("no artifacts VM: create it with "
                           "'somnus vm create artifacts --subsystem artifacts'")
        return vms[0].name

    def run(self, name: str, version: int | None = None, stdin: str = "",
            args: list[str] | None = None, limits: dict[str, object] | None = None,
            progress: Progress | None = None) -> Iterator[RunEvent]:
        """Run a version (default: the latest) and yield its events; the last is the result.

        Refusals (unknown artifact, bad limits, no artifacts VM) raise before any event.
        """
        artifact = self.store.get(name)
        chosen = self.store.version(name, version)
        request = RunRequest(
            run_id=f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
            language=artifact.language, files=chosen.sources(), entry=artifact.entry,
            args=args or [], stdin=stdin, limits=merge_limits(artifact.language, limits or {}),
        )
        record = self.chat.target(self.artifacts_vm(), progress)
        agent = self.chat.svc.agent(record)
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
        run.outcome, run.limit, run.duration_s = result.outcome, result.limit, result.duration_s
        run.exit_code, run.signal = result.exit_code, result.signal
        run.result = result.model_dump_json()
        run.finished_at = datetime.now(UTC)
        self.store.save_run(run)
        ok = result.outcome is RunOutcome.OK
        self.store.set_status(run.artifact,
                              ArtifactStatus.COMPLETED if ok else ArtifactStatus.ERROR)

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

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def events(self, run_id: str) -> list[RunEvent]:
        """A run's recorded events (``somnus artifact logs``)."""
        self.store.run(run_id)
        log = self.run_dir(run_id) / "events.jsonl"
        if not log.is_file():
            return []
        return [RunEvent.model_validate_json(line) for line in log.read_text().splitlines()
                if line.strip()]


def _chain(first: RunEvent, rest: Iterator[RunEvent]) -> Iterator[RunEvent]:
    yield first
    yield from rest


def _dump(files: list[SourceFile]) -> str:
    return json.dumps([f.model_dump() for f in files])
