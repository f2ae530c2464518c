"""The guest agent's HTTP app (FastAPI). Every route requires the VM's token."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import platform
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from guest_agent import __version__, llama_build
from guest_agent.agent import Agent
from guest_agent.chat import BadChatRequest, Turn
from guest_agent.collab import NotAgentVM
from guest_agent.gate import GatedStream, QueueFull
from guest_agent.identity import hand_over, request_text
from guest_agent.memory.manager import MemoryNotFound, MemoryNotReady
from guest_agent.prompts.manager import UnknownRole
from guest_agent.prompts.stack import ContextOverflow
from guest_agent.protocol import (
    AGENT_CONFIG_PATH,
    AdaptiveProfile,
    AgentConfig,
    AgentStatus,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    ChatRole,
    ClockRequest,
    ClockResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ErrorResponse,
    HealthResponse,
    IdentityRequest,
    IdentityResponse,
    InfoResponse,
    MemoryAddResponse,
    MemoryCreate,
    MemoryDeleteResponse,
    MemoryFlushResponse,
    MemoryImportResponse,
    MemoryListResponse,
    MemoryRecord,
    MemorySearchRequest,
    MemorySearchResponse,
    MemoryType,
    ModelCard,
    ModelList,
    ModelStatus,
    PromptInspection,
    RoleDefinition,
    RoleList,
)
from guest_agent.protocol.collab import TurnReply, TurnRequest
from guest_agent.protocol.models_dir import list_models
from guest_agent.protocol.research import (
    RESEARCH_ID_RE,
    CorpusDocument,
    CorpusDocumentIn,
    CorpusList,
    FetchRequestList,
    FetchResult,
    ResearchEvent,
    ResearchReport,
    ResearchRequest,
    ResearchRunList,
    ResearchRunView,
)
from guest_agent.protocol.runs import RunRequest, WebRequest, WebStatus
from guest_agent.protocol.security import GuestEventKind, GuestMetrics
from guest_agent.research.corpus import DocumentNotFound
from guest_agent.research.modes import BadResearchRequest
from guest_agent.research.runs import RunConflict, RunNotFound
from guest_agent.research.service import NotResearchVM
from guest_agent.research.text import UnreadableDocument
from guest_agent.runtime import InputTooLong, ModelNotReady, ModelRuntime
from guest_agent.sandbox.runner import SandboxBusy, SandboxError, SandboxUnavailable
from guest_agent.security import FailureThrottle, own_cgroup

# Below this the guest clock is left alone (the request itself takes milliseconds).
CLOCK_TOLERANCE_S = 0.5
REPORTED_PACKAGES = ("llama_cpp_python", "faiss-cpu", "fastapi", "numpy", "pydantic")
# Exceptions the app turns into HTTP errors (checked in order: subclasses first).
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (QueueFull, 503),
    (SandboxBusy, 503),
    (SandboxUnavailable, 409),
    (SandboxError, 400),
    (ModelNotReady, 503),
    (MemoryNotReady, 503),
    (ContextOverflow, 400),
    (InputTooLong, 400),
    (BadChatRequest, 400),
    (UnknownRole, 404),
    (MemoryNotFound, 404),
    (NotResearchVM, 409),
    (NotAgentVM, 409),
    (RunNotFound, 404),
    (DocumentNotFound, 404),
    (RunConflict, 409),
    (BadResearchRequest, 400),
    (UnreadableDocument, 400),
)
# A research event stream sends a comment after this long without an event, so that
# proxies and clients do not take a quiet run for a dead connection.
RESEARCH_KEEPALIVE_S = 10.0
RETRY_AFTER_S = "2"
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def load_config(path: str | Path = AGENT_CONFIG_PATH) -> AgentConfig:
    """Read the config the orchestrator put in the seed."""
    return AgentConfig.model_validate_json(Path(path).read_text())


def wait_for_config(path: str | Path = AGENT_CONFIG_PATH, poll_s: float = 0.2,
                    sleep: Callable[[float], None] = time.sleep) -> AgentConfig:
    """The config, once cloud-init has written all of it.

    The agent starts beside cloud-init, not after it (its imports take ~9 s under
    TCG), so on a first boot the file may be missing, still root's, or half-written.
    """
    waiting = False
    while True:
        try:
            return load_config(path)
        except (OSError, ValidationError) as exc:
            if not waiting:
                logging.getLogger(__name__).info("waiting for %s: %s", path,
                                                 str(exc).splitlines()[0])
                waiting = True
            sleep(poll_s)


def _package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if status == 503:
        headers = {**(headers or {}), "Retry-After": RETRY_AFTER_S}
    body = ErrorResponse(error=message)
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"


def _research_sse(events: Iterator[ResearchEvent | None]) -> Iterator[str]:
    """A run's events as SSE (``None``: a keepalive comment)."""
    for event in events:
        yield ": keepalive\n\n" if event is None else f"data: {event.model_dump_json()}\n\n"


def _chunks(turn: Turn) -> Iterator[str]:
    """The SSE events of one streamed turn (OpenAI/llama-server shape), ending in [DONE]."""

    def chunk(delta: ChatDelta, **extra: Any) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=extra.pop("finish_reason", None))
        return ChatCompletionChunk(
            id=turn.id, created=turn.created, model=turn.model, choices=[choice], **extra
        )

    yield _sse(chunk(ChatDelta(role=ChatRole.ASSISTANT)))
    try:
        for text in turn:
            yield _sse(chunk(ChatDelta(content=text)))
    except Exception as exc:  # the status line is gone: report in-band, as llama-server does
        yield _sse(ErrorResponse(error=f"{type(exc).__name__}: {exc}"))
        return
    yield _sse(
        chunk(
            ChatDelta(),
            finish_reason=turn.finish_reason,
            usage=turn.usage,
            timings=turn.timings,
            somnus=turn.report(),
        )
    )
    yield "data: [DONE]\n\n"


def save_config(config: AgentConfig, path: Path) -> None:
    """Rewrite the config file in place: the agent owns the file, not its root-owned folder."""
    with path.open("r+") as f:
        f.write(config.model_dump_json())
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def create_app(config: AgentConfig, runtime: ModelRuntime | None = None,
               config_path: Path | None = None, identity_dir: Path | None = None,
               failures: FailureThrottle | None = None) -> FastAPI:
    """Build the agent app bound to one VM's config and token.

    ``runtime`` lets several apps share one loaded model (tests, benchmarks);
    by default the app loads its own in a background thread at startup.
    ``config_path``: where ``POST /identity`` writes a new identity (None: memory only);
    ``identity_dir``: where it hands the system's part to the root unit
    (``guest_agent.identity``; None: not applied, as in tests without a guest).
    ``failures``: how failed authentications are slowed down (the default throttle).
    """
    started = time.monotonic()
    # The name and token change when a VM made from a template takes its own (/identity).
    current = [config]
    agent = Agent(config, runtime)

    failures = failures or FailureThrottle()

    async def require_token(request: Request) -> None:
        # 401 for a missing and a wrong token alike: OpenAI clients read 401 as "bad key".
        # Constant-time comparison; past the limit each failure is answered slower.
        given = request.headers.get("authorization", "").encode()
        if given and hmac.compare_digest(given, f"Bearer {current[0].token}".encode()):
            return
        why = "wrong token" if given else "missing bearer token"
        agent.ledger.record(GuestEventKind.AUTH_FAILURE, f"{why}: {request.url.path}")
        await asyncio.sleep(failures.delay_s())
        raise HTTPException(status_code=401, detail=why, headers=BEARER_CHALLENGE)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        agent.start()
        agent.ledger.follow_ssh()
        yield
        await run_in_threadpool(agent.wait_ready, 120)
        await run_in_threadpool(agent.close)

    # Token on every route, including the schema: no unauthenticated docs pages.
    app = FastAPI(
        title="Somnus guest agent",
        version=__version__,
        dependencies=[Depends(require_token)],
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.agent = agent

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    for exc_type, status in ERROR_STATUS:

        async def _mapped(_: Request, exc: Exception, status: int = status) -> JSONResponse:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return _error(status, str(message))

        app.add_exception_handler(exc_type, _mapped)

    def require_ready() -> None:
        if agent.status is AgentStatus.ERROR:
            raise ModelNotReady(f"model failed to load: {agent.error}")
        if agent.status is AgentStatus.LOADING:
            raise ModelNotReady("model is loading")

    def me() -> AgentConfig:
        return current[0]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/health")
    def health() -> HealthResponse:
        return HealthResponse(
            status=agent.status,
            vm_name=me().vm_name,
            agent_version=__version__,
            uptime_s=time.monotonic() - started,
            model=agent.runtime.model_id,
            error=agent.error,
        )

    @app.get("/security")
    def security(since: int = 0) -> GuestMetrics:
        """The guest's own security metrics, and its events numbered after ``since``."""
        return agent.ledger.report(me().vm_name, since, own_cgroup())

    @app.post("/clock")
    def clock(request: ClockRequest) -> ClockResponse:
        """Set the guest clock to the host's: a guest restored from a save is behind."""
        skew = time.time() - request.epoch
        if abs(skew) < CLOCK_TOLERANCE_S:
            return ClockResponse(skew_s=skew, set=False, vm_name=me().vm_name)
        try:
            time.clock_settime(time.CLOCK_REALTIME, request.epoch)
        except PermissionError:  # the unit grants CAP_SYS_TIME; without it, report
            return ClockResponse(skew_s=skew, set=False, vm_name=me().vm_name)
        return ClockResponse(skew_s=skew, set=True, vm_name=me().vm_name)

    @app.post("/identity")
    def identity(request: IdentityRequest) -> IdentityResponse:
        """Take the name and token the host made for this VM (it started from a template)."""
        applied = identity_dir is not None and hand_over(
            identity_dir, request_text(request.vm_name, request.seed, request.host_public,
                                       request.host_private), request.vm_name)
        new = me().model_copy(update={"vm_name": request.vm_name, "token": request.token})
        saved = False
        if config_path is not None:
            try:
                save_config(new, config_path)
                saved = True
            except OSError as exc:  # a cold boot gets it from the seed again anyway
                logging.getLogger(__name__).warning("identity not saved: %s", exc)
        current[0] = new
        logging.getLogger(__name__).info("identity: now VM '%s'", new.vm_name)
        return IdentityResponse(vm_name=new.vm_name, applied=applied, saved=saved)

    @app.get("/info")
    def info() -> InfoResponse:
        return InfoResponse(
            vm_name=me().vm_name,
            subsystem=config.subsystem,
            hostname=socket.gethostname(),
            kernel=platform.release(),
            python=platform.python_version(),
            agent_version=__version__,
            packages=_package_versions(),
            models=list_models(),
            llama_build=llama_build.loaded().build,
            llama_build_reason=llama_build.loaded().reason,
        )

    # -- model ----------------------------------------------------------------

    @app.get("/model")
    def model_status() -> ModelStatus:
        return agent.runtime.status()

    @app.get("/v1/models")
    def models() -> ModelList:
        return ModelList(data=[ModelCard(id=agent.runtime.model_id)])

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(
        request: ChatCompletionRequest,
    ) -> ChatCompletionResponse | StreamingResponse:
        require_ready()
        agent.gate.enter()
        try:
            turn = agent.engine.prepare(request)
        except BaseException:
            agent.gate.leave()
            raise
        if request.stream:
            return StreamingResponse(
                GatedStream(_chunks(turn), agent.gate),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text = "".join(turn)
        finally:
            agent.gate.leave()
        assert turn.usage is not None and turn.timings is not None
        return ChatCompletionResponse(
            id=turn.id,
            created=turn.created,
            model=turn.model,
            choices=[
                ChatChoice(
                    message=ChatMessage(role=ChatRole.ASSISTANT, content=text),
                    finish_reason=turn.finish_reason,
                )
            ],
            usage=turn.usage,
            timings=turn.timings,
            somnus=turn.report(),
        )

    @app.post("/v1/embeddings")
    def embeddings(request: EmbeddingRequest) -> EmbeddingResponse:
        require_ready()
        texts = [request.input] if isinstance(request.input, str) else request.input
        with agent.gate.slot():
            result = agent.runtime.embed(texts, truncate=False)
        used = sum(result.token_counts)
        return EmbeddingResponse(
            data=[
                EmbeddingData(index=i, embedding=v.tolist()) for i, v in enumerate(result.vectors)
            ],
            model=agent.runtime.embedding_model_id,
            usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used),
        )

    # -- memory ---------------------------------------------------------------

    @app.post("/memory")
    def memory_add(item: MemoryCreate, background: bool = False) -> MemoryAddResponse:
        require_ready()
        if background:  # no model work on this request: no queue slot either
            return agent.memory.add(item, background=True)
        with agent.gate.slot():
            return agent.memory.add(item)

    @app.get("/memory")
    def memory_list(
        offset: int = 0,
        limit: int = 100,
        memory_type: MemoryType | None = None,
        conversation_id: str | None = None,
    ) -> MemoryListResponse:
        rows, total = agent.memory.store.page(
            offset, min(limit, 1000), memory_type, conversation_id
        )
        return MemoryListResponse(memories=[m.record for m in rows], total=total,
                                  pending_embeddings=agent.memory.pending)

    @app.post("/memory/search")
    def memory_search(request: MemorySearchRequest) -> MemorySearchResponse:
        require_ready()
        with agent.gate.slot():
            return MemorySearchResponse(hits=agent.memory.search(request))

    @app.get("/memory/export")
    def memory_export() -> StreamingResponse:
        return StreamingResponse(agent.memory.export_lines(), media_type="application/x-ndjson")

    @app.post("/memory/import")
    async def memory_import(request: Request) -> MemoryImportResponse:
        require_ready()
        # "\n" only: str.splitlines also cuts at U+2028, U+0085 and the like, which JSON
        # leaves unescaped inside a memory's text.
        lines = (await request.body()).decode().split("\n")

        def run() -> MemoryImportResponse:
            with agent.gate.slot():
                return agent.memory.import_lines(lines)

        try:
            return await run_in_threadpool(run)
        except ValueError as exc:  # a line that is not a memory record
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.post("/memory/flush")
    def memory_flush() -> MemoryFlushResponse:
        require_ready()
        return agent.memory.flush()

    @app.get("/memory/{memory_id}")
    def memory_get(memory_id: str) -> MemoryRecord:
        return agent.memory.get_memory_by_id(memory_id)

    @app.delete("/memory/{memory_id}")
    def memory_delete(memory_id: str) -> MemoryDeleteResponse:
        agent.memory.delete(memory_id)
        return MemoryDeleteResponse(memory_id=memory_id, deleted=True)

    # -- sandboxed runs (the artifacts VM) ----------------------------------------

    @app.post("/runs", response_model=None)
    def run(request: RunRequest) -> StreamingResponse:
        """Run a program in a fresh sandbox; its events stream as SSE, ending in a result."""
        events = agent.sandbox.start(request)  # refusals raise here, before the stream
        return StreamingResponse(
            (_sse(event) for event in agent.ledger.watch_runs(events)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/runs/{run_id}/files/{path:path}")
    def run_file(run_id: str, path: str) -> FileResponse:
        """A file a run produced in its working folder."""
        try:
            return FileResponse(agent.sandbox.produced_file(run_id, path))
        except FileNotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc

    @app.post("/web")
    def web_open(request: WebRequest) -> WebStatus:
        """Serve a web artifact on the web port (replacing the open one)."""
        return agent.web.open(request)

    @app.get("/web")
    def web_status() -> WebStatus:
        if (status := agent.web.status()) is None:
            raise HTTPException(status_code=404, detail="no web artifact is open")
        return status

    @app.delete("/web")
    def web_stop() -> WebStatus:
        if (status := agent.web.stop()) is None:
            raise HTTPException(status_code=404, detail="no web artifact is open")
        return status

    # -- collaboration (agent VMs) -------------------------------------------------------

    @app.post("/collab/turn")
    def collab_turn(request: TurnRequest) -> TurnReply:
        """One turn of a multi-agent collaboration, as the role the request names."""
        turns = agent.collab
        require_ready()
        agent.gate.enter()
        try:
            return turns.take(request)
        finally:
            agent.gate.leave()

    # -- research (the research VM) ----------------------------------------------------

    def run_id_of(run_id: str) -> str:
        if not RESEARCH_ID_RE.match(run_id):
            raise HTTPException(status_code=400, detail=f"not a research run id: {run_id!r} "
                                "(lowercase letters, digits and '-', 4 to 40)")
        return run_id

    @app.post("/research/runs", status_code=202)
    def research_start(request: ResearchRequest) -> ResearchRunView:
        """Queue a research run; follow it with ``GET /research/runs/{id}/events``."""
        research = agent.research
        require_ready()
        return research.runs.start(request)

    @app.get("/research/runs")
    def research_list() -> ResearchRunList:
        return ResearchRunList(runs=agent.research.runs.list())

    @app.get("/research/runs/{run_id}")
    def research_view(run_id: str) -> ResearchRunView:
        return agent.research.runs.view(run_id_of(run_id))

    @app.get("/research/runs/{run_id}/events", response_model=None)
    def research_events(run_id: str, after: int = Query(default=0, ge=0),
                        follow: bool = False) -> StreamingResponse:
        """The run's events after ``after`` as SSE; with ``follow`` until it has finished."""
        runs = agent.research.runs
        runs.view(run_id_of(run_id))  # a missing run is a 404, before the stream starts
        source: Iterator[ResearchEvent | None] = (
            runs.follow(run_id, after, keepalive_s=RESEARCH_KEEPALIVE_S) if follow
            else iter(runs.events(run_id, after)))
        return StreamingResponse(
            _research_sse(source),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/research/runs/{run_id}/cancel")
    def research_cancel(run_id: str) -> ResearchRunView:
        return agent.research.runs.cancel(run_id_of(run_id))

    @app.post("/research/runs/{run_id}/resume")
    def research_resume(run_id: str) -> ResearchRunView:
        research = agent.research
        require_ready()
        return research.runs.resume(run_id_of(run_id))

    @app.get("/research/runs/{run_id}/report")
    def research_report(run_id: str) -> ResearchReport:
        return agent.research.runs.report(run_id_of(run_id))

    @app.post("/research/corpus")
    def research_corpus_add(document: CorpusDocumentIn) -> CorpusDocument:
        """Index a document (its text extracted and embedded before the answer)."""
        research = agent.research
        require_ready()
        with agent.gate.slot():
            return research.corpus.add(document)

    @app.get("/research/corpus")
    def research_corpus_list() -> CorpusList:
        return CorpusList(documents=agent.research.corpus.list())

    @app.delete("/research/corpus/{doc_id}")
    def research_corpus_remove(doc_id: str) -> CorpusDocument:
        return agent.research.corpus.remove(doc_id)

    @app.get("/research/fetches")
    def research_fetches(wait: float = Query(default=0.0, ge=0.0, le=30.0)) -> FetchRequestList:
        """What runs wait to have fetched (the host's fetch proxy long-polls this)."""
        return FetchRequestList(requests=agent.research.broker.pending(wait))

    @app.post("/research/fetches/{fetch_id}")
    def research_fetch_answer(fetch_id: str, result: FetchResult) -> dict[str, bool]:
        if not agent.research.broker.answer(fetch_id, result):
            raise HTTPException(status_code=404, detail=f"no run waits for fetch {fetch_id!r} "
                                "(answered already, or given up on)")
        return {"accepted": True}

    # -- prompts --------------------------------------------------------------

    @app.get("/prompt/last")
    def prompt_last() -> PromptInspection:
        if agent.engine.last_prompt is None:
            raise HTTPException(status_code=404, detail="no prompt assembled yet")
        return agent.engine.last_prompt

    @app.get("/prompt/profile")
    def prompt_profile() -> AdaptiveProfile:
        return agent.bridge.adaptive.profile

    @app.get("/prompt/roles")
    def prompt_roles() -> RoleList:
        return RoleList(roles=agent.bridge.roles.list())

    @app.post("/prompt/roles")
    def prompt_define_role(role: RoleDefinition) -> RoleDefinition:
        return agent.bridge.roles.define(role)

    return app
