"""Research as the CLI and the API offer it: runs in the research VM, followed from the host.

A run goes to the agent of the research VM (``somnus vm create research --subsystem
research``), which is a foreground subsystem like chat: a command that needs it
activates it. The VM holds the truth about a run while it runs; the host records the
last view it saw of each run, and its report once there is one, so listing runs and
reading reports work while the VM is off.

The VM has no network. Runs over the web queue fetch requests, which the host's fetch
proxy (``orchestrator.research.proxy``) answers while someone follows a run: the CLI
while it follows, ``somnus serve`` whenever the research VM runs. Following survives
a swap: a broken event stream is taken up again from the last event seen, with the
VM brought up again.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import (
    Conflict,
    GuestError,
    GuestInvalidInput,
    GuestNotFound,
    InvalidInput,
    NotFound,
)
from core.types import Progress
from guest_agent.protocol import AgentStatus, Subsystem
from guest_agent.protocol.research import (
    FINISHED,
    MAX_DOCUMENT_BYTES,
    CorpusDocument,
    CorpusDocumentIn,
    CorpusList,
    DocumentFormat,
    ResearchEvent,
    ResearchEventKind,
    ResearchMode,
    ResearchReport,
    ResearchRequest,
    ResearchRunView,
    RoleSlot,
    SourceKind,
    SourceScope,
)
from orchestrator.agent_client import AgentClient
from orchestrator.models import VMRecord
from orchestrator.research.proxy import FetchProxy, media_type, normalize_host
from orchestrator.research.tables import FetchLogKind, ResearchStore
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService

log = logging.getLogger(__name__)

FOLLOW_RETRIES = 5  # reconnections in a row before following gives up
SERVE_CHECK_S = 5.0  # how often 'somnus serve' looks whether the research VM runs
MAX_CORPUS_FILES = 2000  # documents of one folder
CORPUS_SUFFIXES = {".html": DocumentFormat.HTML, ".htm": DocumentFormat.HTML,
                   ".md": DocumentFormat.MARKDOWN, ".markdown": DocumentFormat.MARKDOWN,
                   ".txt": DocumentFormat.TEXT, ".rst": DocumentFormat.TEXT,
                   ".pdf": DocumentFormat.PDF}
MEDIA_FORMATS = {"text/html": DocumentFormat.HTML, "application/xhtml+xml": DocumentFormat.HTML,
                 "text/markdown": DocumentFormat.MARKDOWN, "text/x-markdown":
                 DocumentFormat.MARKDOWN, "text/plain": DocumentFormat.TEXT,
                 "application/pdf": DocumentFormat.PDF}
# Events after which the host's record of the run is brought up to date.
REFRESHING = frozenset({ResearchEventKind.STATUS, ResearchEventKind.STAGE_DONE})


class AllowedHost(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    host: str
    added_at: datetime


class FetchLogEntry(BaseModel):
    """One request of the fetch proxy, refused ones too."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    vm: str | None
    run_id: str | None
    kind: FetchLogKind
    target: str  # the URL, or the search query
    host: str | None
    allowed: bool
    status: int | None
    bytes: int
    cached: bool
    reason: str | None


def new_research_id() -> str:
    """A run's id: short and readable, ``r-`` and 8 hex digits."""
    return f"r-{uuid.uuid4().hex[:8]}"


def research_request(**fields: object) -> ResearchRequest:
    """A request from the fields given (the protocol's defaults for the others); a bad
    value is one InvalidInput line."""
    try:
        return ResearchRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise InvalidInput(f"research request: {problems}") from None


def is_url(text: str) -> bool:
    return text.strip().lower().startswith(("http://", "https://"))


# Loading the model and the corpus index under TCG, on a busy host.
MODEL_WAIT_S = 600.0


class _Serving:
    """The fetch proxy serving one VM's queue in a daemon thread, for a follower."""

    def __init__(self, proxy: FetchProxy, agent: AgentClient, vm: str) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=proxy.serve, args=(agent, vm, self.stopped),
                                       name=f"research-fetch-{vm}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()  # the thread ends after its current long poll


class ResearchService:
    """Research runs, the corpus, and the fetch proxy's allow-list and log."""

    def __init__(self, vms: VMService, swap: SwapEngine, store: ResearchStore,
                 proxy: FetchProxy) -> None:
        self.vms = vms
        self.swap = swap
        self.store = store
        self.proxy = proxy
        self.retry_wait_s = 2.0  # before reconnecting a broken event stream (times the tries)

    # -- the research VM --------------------------------------------------------------------

    def research_vm(self) -> str:
        """The VM runs go to: the (first) VM of the research subsystem."""
        vms = [vm for vm in self.vms.store.list_vms() if vm.subsystem is Subsystem.RESEARCH]
        if not vms:
            raise Conflict("no research VM: create it with "
                           "'somnus vm create research --subsystem research'")
        return vms[0].name

    def _running(self) -> VMRecord | None:
        """The research VM if there is one and it runs (never brought up)."""
        try:
            record = self.vms.store.get_vm(self.research_vm())
        except Conflict:
            return None
        return record if self.vms.hv.is_running(record.domain_name) else None

    def _vm_up(self, progress: Progress | None) -> VMRecord:
        """The research VM, running: activated (it is a foreground subsystem) if need be."""
        name = self.research_vm()
        record = self.vms.store.get_vm(name)
        if not self.vms.hv.is_running(record.domain_name):
            self.swap.activate(name, progress)
            record = self.vms.store.get_vm(name)
        return record

    def _agent(self, progress: Progress | None = None) -> tuple[VMRecord, AgentClient]:
        """The research VM's agent, its model and corpus loaded (a VM just booted or
        restarted answers before they are: research needs both)."""
        record = self._vm_up(progress)
        agent = self.vms.agent(record)
        if agent.health().status is not AgentStatus.OK:
            if progress:
                progress(f"waiting for '{record.name}' to load its model and corpus")
            agent.wait_model(MODEL_WAIT_S)
        return record, agent

    # -- runs -------------------------------------------------------------------------------

    def start(self, question: str, mode: ResearchMode | None = None, depth: int | None = None,
              breadth: int | None = None, sources: SourceScope | None = None,
              max_sources: int | None = None, budget_tokens: int | None = None,
              budget_minutes: int | None = None, max_model_calls: int | None = None,
              subjects: list[str] | None = None, roles: dict[RoleSlot, str] | None = None,
              progress: Progress | None = None) -> ResearchRunView:
        """Start a run in the research VM (activated if need be); its first view. Options
        left None take the protocol's defaults."""
        request = research_request(
            run_id=new_research_id(), question=question, mode=mode, depth=depth,
            breadth=breadth, sources=sources, max_sources=max_sources,
            budget_tokens=budget_tokens, budget_minutes=budget_minutes,
            max_model_calls=max_model_calls, subjects=subjects, roles=roles)
        self.research_vm()  # refusals come before anything is brought up
        if request.sources is not SourceScope.CORPUS and not self.proxy.allowed():
            raise InvalidInput("web research needs an allowed host: 'somnus research allow HOST'")
        record, agent = self._agent(progress)
        view = agent.research_start(request)
        self.store.save_view(record.name, view)
        return view

    def _known(self, run_id: str) -> ResearchRunView:
        """The host's view of a run; one the running VM knows and the host does not yet
        is recorded first. NotFound otherwise."""
        row = self.store.find_run(run_id)
        if row is not None:
            return row.view()
        running = self._running()
        if running is not None:
            try:
                return self._refresh(running.name, self.vms.agent(running), run_id)
            except GuestNotFound:
                pass
        return self.store.run(run_id).view()  # raises NotFound

    def _refresh(self, vm: str, agent: AgentClient, run_id: str) -> ResearchRunView:
        """The VM's view of the run, recorded; a finished run's report cached too."""
        view = agent.research_run(run_id)
        row = self.store.save_view(vm, view)
        if view.status in FINISHED and row.report_json is None:
            try:
                self.store.save_report(agent.research_report(run_id))
            except GuestError as exc:  # an error or a cancel before there was any report
                log.info("research run %s: no report to cache: %s", run_id, exc)
        return view

    def runs(self) -> list[ResearchRunView]:
        """Every run, newest first; brought up to date from the VM when it runs."""
        running = self._running()
        if running is not None:
            try:
                for view in self.vms.agent(running).research_runs().runs:
                    self.store.save_view(running.name, view)
            except GuestError as exc:
                log.warning("research runs: the VM's list is not read: %s", exc)
        return [row.view() for row in self.store.runs()]

    def status(self, run_id: str) -> ResearchRunView:
        """A run as the VM sees it when the VM runs, else as the host last saw it."""
        running = self._running()
        if running is not None:
            try:
                return self._refresh(running.name, self.vms.agent(running), run_id)
            except GuestNotFound:
                pass
            except GuestError as exc:
                log.warning("research run %s: the VM's view is not read: %s", run_id, exc)
        return self.store.run(run_id).view()

    def follow(self, run_id: str, after: int = 0,
               progress: Progress | None = None) -> Iterator[ResearchEvent]:
        """The run's events after ``after`` as they come, until it finishes, while the
        fetch proxy serves its web requests in a thread. A finished run on a VM that is
        off yields nothing. A broken stream is taken up again (the VM brought up again)
        from the last event seen, up to FOLLOW_RETRIES times in a row."""
        view = self._known(run_id)
        if view.status in FINISHED and self._running() is None:
            return
        seq, failures = after, 0
        record: VMRecord | None = None
        agent: AgentClient | None = None
        serving: _Serving | None = None
        try:
            while True:
                try:
                    if agent is None or record is None:
                        record, agent = self._agent(progress)
                        serving = _Serving(self.proxy, agent, record.name)
                    for event in agent.research_events(run_id, after=seq, follow=True):
                        seq, failures = max(seq, event.seq), 0
                        if event.kind in REFRESHING:
                            self._refresh(record.name, agent, run_id)
                        yield event
                    self._refresh(record.name, agent, run_id)
                    return
                except GuestNotFound:
                    raise
                except GuestError as exc:
                    failures += 1
                    if failures > FOLLOW_RETRIES:
                        raise
                    log.info("research run %s: following again after event %d: %s",
                             run_id, seq, exc)
                    if progress:
                        progress(f"the run's event stream broke ({exc}); following again "
                                 f"({failures}/{FOLLOW_RETRIES})")
                    if serving is not None:
                        serving.stop()
                    record = agent = serving = None
                    time.sleep(self.retry_wait_s * failures)
        finally:
            if serving is not None:
                serving.stop()

    def report(self, run_id: str) -> ResearchReport:
        """A finished run's report: the host's copy, or the VM's (then kept on the host)."""
        view = self._known(run_id)
        row = self.store.find_run(run_id)
        if row is not None and (cached := row.report()) is not None:
            return cached
        if view.status not in FINISHED and self._running() is None:
            raise _unfinished(view)
        record, agent = self._agent()
        view = self._refresh(record.name, agent, run_id)
        if view.status not in FINISHED:
            raise _unfinished(view)
        report = agent.research_report(run_id)
        self.store.save_report(report)
        return report

    def cancel(self, run_id: str, progress: Progress | None = None) -> ResearchRunView:
        """Stop a run at its next step; ``resume`` goes on from the stage it had reached."""
        return self._change(run_id, lambda agent: agent.research_cancel(run_id), progress)

    def resume(self, run_id: str, progress: Progress | None = None) -> ResearchRunView:
        """Go on with a stopped run from the stage it had reached (not a completed one)."""
        return self._change(run_id, lambda agent: agent.research_resume(run_id), progress)

    def _change(self, run_id: str, call: Callable[[AgentClient], ResearchRunView],
                progress: Progress | None) -> ResearchRunView:
        """Ask the research VM to change a known run; keep its new view on the host."""
        self._known(run_id)
        record, agent = self._agent(progress)
        view = call(agent)
        self.store.save_view(record.name, view)
        return view

    # -- the corpus -------------------------------------------------------------------------

    def corpus_add(self, source: str, progress: Progress | None = None) -> list[CorpusDocument]:
        """Add a file, a folder's documents (recursively: .html .htm .md .markdown .txt
        .rst .pdf; other files are skipped with a note), or a URL (fetched through the
        proxy: the allow-list applies) to the research VM's corpus."""
        if is_url(source):
            self.research_vm()
            documents = [self._url_document(source.strip())]
        else:
            try:
                path = Path(source).expanduser()
                found = path.exists()
            except (RuntimeError, ValueError, OSError):  # ~nobody, a NUL, a name too long
                found = False
            if not found:
                raise NotFound(f"no such file or folder: {source}")
            self.research_vm()
            documents = self._documents(path.absolute(), progress)
        agent = self._agent(progress)[1]
        added = []
        for doc in documents:
            if progress:
                progress(f"adding {doc.ref}")
            try:
                added.append(agent.corpus_add(doc))
            except GuestInvalidInput as exc:  # a document the VM cannot read: the rest go on
                if len(documents) == 1:
                    raise
                if progress:
                    progress(f"skipped {doc.ref}: {exc}")
        return added

    def _url_document(self, url: str) -> CorpusDocumentIn:
        result = self.proxy.fetch(url)
        if not result.ok or result.body_b64 is None:
            raise InvalidInput(result.error or f"{url}: nothing was fetched")
        fmt = MEDIA_FORMATS.get(media_type(result.content_type))
        if fmt is None:
            fmt = CORPUS_SUFFIXES.get(Path(url.split("?")[0]).suffix.lower())
        if fmt is None:
            raise InvalidInput(f"{url}: a {media_type(result.content_type) or 'document'} is "
                               "not a corpus format (HTML, Markdown, text, PDF)")
        return CorpusDocumentIn(ref=result.url or url, title=result.title, format=fmt,
                                content_b64=result.body_b64, kind=SourceKind.CORPUS)

    def _documents(self, path: Path, progress: Progress | None) -> list[CorpusDocumentIn]:
        documents = []
        for file in self._corpus_files(path, progress):
            size = file.stat().st_size
            if size > MAX_DOCUMENT_BYTES:
                if progress:
                    progress(f"skipped {file}: {size} bytes, over {MAX_DOCUMENT_BYTES}")
                continue
            documents.append(CorpusDocumentIn(
                ref=str(file), format=CORPUS_SUFFIXES[file.suffix.lower()],
                content_b64=base64.b64encode(file.read_bytes()).decode("ascii")))
        if not documents:
            raise InvalidInput(f"no documents to add in {path} (it takes "
                               f"{', '.join(CORPUS_SUFFIXES)})")
        return documents

    def _corpus_files(self, path: Path, progress: Progress | None) -> list[Path]:
        if path.is_file():
            if path.suffix.lower() not in CORPUS_SUFFIXES:
                raise InvalidInput(f"{path}: not a corpus format (it takes "
                                   f"{', '.join(CORPUS_SUFFIXES)})")
            return [path]
        files = []
        for folder, dirs, names in os.walk(path):  # symbolic links to folders not followed
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                file = Path(folder) / name
                if file.suffix.lower() not in CORPUS_SUFFIXES or not file.is_file():
                    if progress and not name.startswith("."):
                        progress(f"skipped {file}: not a corpus format")
                    continue
                files.append(file)
                if len(files) > MAX_CORPUS_FILES:
                    raise InvalidInput(f"{path} holds more than {MAX_CORPUS_FILES} documents: "
                                       "add its folders one at a time")
        return files

    def corpus_list(self, progress: Progress | None = None) -> CorpusList:
        return self._agent(progress)[1].corpus_list()

    def corpus_remove(self, doc_id: str, progress: Progress | None = None) -> CorpusDocument:
        return self._agent(progress)[1].corpus_remove(doc_id)

    # -- the fetch proxy --------------------------------------------------------------------

    def allow(self, host: str) -> AllowedHost:
        """Put a host on the allow-list (``example.org``, ``127.0.0.1:8765``, a URL: kept
        as ``host[:port]``, lowercase)."""
        return AllowedHost.model_validate(self.store.allow(normalize_host(host)))

    def disallow(self, host: str) -> str:
        """Take a host off the allow-list; its normalised form."""
        try:
            key = normalize_host(host)
        except InvalidInput:  # no host at all, so not one on the list
            key = host.strip()
        if not self.store.disallow(key):
            raise NotFound(f"host '{key[:200]}' is not on the research allow-list "
                           "(see 'somnus research allowed')")
        return key

    def allowed(self) -> list[AllowedHost]:
        return [AllowedHost.model_validate(row) for row in self.store.allowed()]

    def crawl(self, host: str, max_pages: int = 200, progress: Progress | None = None) -> int:
        """Index an allowed host's pages for search (see ``FetchProxy.crawl``)."""
        return self.proxy.crawl(host, max_pages, progress)

    def fetch_log(self, limit: int = 100, run_id: str | None = None) -> list[FetchLogEntry]:
        """The proxy's requests, newest first."""
        return [FetchLogEntry.model_validate(row) for row in self.store.fetch_log(limit, run_id)]

    def serve_fetches(self, stop: threading.Event, check_s: float = SERVE_CHECK_S) -> None:
        """Serve the research VM's fetch queue whenever that VM runs, until ``stop`` is set
        (``somnus serve``'s thread; it never brings the VM up, and never raises)."""
        while not stop.is_set():
            try:
                record = self._running()
                if record is None:
                    stop.wait(check_s)
                    continue
                self.proxy.serve_round(self.vms.agent(record), record.name)
            except GuestError as exc:
                log.info("research fetch queue: %s", exc)
                stop.wait(check_s)
            except Exception:
                log.exception("research fetch queue: serving failed")
                stop.wait(check_s)

    def start_serving(self) -> tuple[threading.Thread, threading.Event]:
        """``serve_fetches`` in a daemon thread; set the event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.serve_fetches, args=(stop,),
                                  name="research-fetches", daemon=True)
        thread.start()
        return thread, stop


def _unfinished(view: ResearchRunView) -> Conflict:
    return Conflict(f"research run '{view.run_id}' has not finished (it is {view.status}): "
                    f"'somnus research status {view.run_id} --follow'")
