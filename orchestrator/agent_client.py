"""Talk to a guest agent through its loopback port forward.

Request and response bodies are the agent's own models (guest_agent.protocol).
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Iterator
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from core.errors import (
    Busy,
    GuestConflict,
    GuestError,
    GuestInvalidInput,
    GuestNotFound,
)
from guest_agent.protocol import (
    AgentStatus,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClockRequest,
    ClockResponse,
    ErrorResponse,
    HealthResponse,
    IdentityRequest,
    IdentityResponse,
    InfoResponse,
    MemoryAddResponse,
    MemoryCreate,
    MemoryFlushResponse,
    MemoryImportResponse,
    MemoryListResponse,
    MemorySearchRequest,
    MemorySearchResponse,
    MemoryType,
    ModelStatus,
    PromptInspection,
)
from guest_agent.protocol.collab import TurnReply, TurnRequest
from guest_agent.protocol.research import (
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
from guest_agent.protocol.runs import RunEvent, RunRequest, WebRequest, WebStatus
from guest_agent.protocol.security import GuestMetrics

T = TypeVar("T", bound=BaseModel)

# A 135M model under TCG answers in seconds, a big GGUF in minutes.
CHAT_TIMEOUT_S = 600.0
# Between two events of a run: a silent program is stopped by its own limits first.
RUN_TIMEOUT_S = 3600.0
# Between two bytes of a research run's events: the agent sends a keepalive comment
# well within this while a stage is quiet.
RESEARCH_EVENTS_TIMEOUT_S = 60.0
# Sending a corpus document (up to 20 MiB): the VM extracts and indexes it before answering.
CORPUS_TIMEOUT_S = 600.0
JSON = "application/json"
Timeout = float | httpx.Timeout


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every call. The agent speaks plain HTTP, but httpx builds a
    context per call unless given one: ~20 ms of CPU each (loading the CA bundle), which
    was most of a security-monitor round (bench.security)."""
    return ssl.create_default_context()


def _one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (whitespace collapsed), cut at ``limit``."""
    return " ".join(str(text).split())[:limit]


def _reason(exc: Exception) -> str:
    return _one_line(exc) or type(exc).__name__


def _error_text(response: httpx.Response) -> str:
    """The guest's own message, on one line.

    The agent answers ``{error, detail}`` (guest_agent.app); FastAPI's request
    validation answers ``{detail: [{loc, msg}, ...]}``; anything else is shown raw.
    """
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI's 422
            detail = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', d)}"
                if isinstance(d, dict) else str(d) for d in detail)
        body = body.get("error") or detail or body
    return _one_line(body) or f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> int:
    """The guest's ``Retry-After`` in whole seconds (1 when absent or not a number)."""
    try:
        return max(0, int(response.headers.get("retry-after", "")))
    except ValueError:
        return 1


class AgentClient:
    """Typed calls to one VM's agent.

    ``vm_name`` prefixes error messages; without it they name the agent's URL.
    """

    def __init__(self, port: int, token: str, host: str = "127.0.0.1",
                 vm_name: str | None = None) -> None:
        self.base_url = f"http://{host}:{port}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.vm = vm_name

    @property
    def _who(self) -> str:
        return f"VM '{self.vm}'" if self.vm else f"the agent at {self.base_url}"

    def _refused(self, method: str, path: str, response: httpx.Response) -> GuestError:
        """The error for a non-200 answer: the guest's status keeps its meaning."""
        status, text = response.status_code, _error_text(response)
        if status == 503:  # the guest's queue is full or its model still loads
            return Busy(text, _retry_after(response), self.vm)
        if status in (400, 422):
            return GuestInvalidInput(f"{self._who}: {text}")
        if status == 404:
            return GuestNotFound(f"{self._who}: {text}")
        if status == 409:
            return GuestConflict(f"{self._who}: {text}")
        if status in (401, 403):
            return GuestError(f"{self._who}: the agent refused the VM's token ({status}: {text})")
        return GuestError(f"{self._who}: agent {method} {path} answered {status}: {text}")

    def _unreachable(self, exc: httpx.HTTPError) -> GuestError:
        """The error for no answer at all (refused, reset, timed out): one line and what to run."""
        where = f"VM '{self.vm}': its agent at {self.base_url}" if self.vm else self._who
        check = f"somnus vm info {self.vm}" if self.vm else "somnus vm info NAME"
        return GuestError(f"{where} does not answer ({_reason(exc)}); check the VM: '{check}'")

    def _send(self, method: str, path: str, timeout_s: float, *, body: BaseModel | None = None,
              content: str | None = None, params: dict[str, str | int] | None = None,
              ) -> httpx.Response:
        headers = {**self.headers, "Content-Type": JSON} if body is not None else self.headers
        try:
            response = httpx.request(
                method, self.base_url + path, headers=headers, params=params,
                content=body.model_dump_json() if body is not None else content,
                timeout=timeout_s, verify=_tls(),
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if not 200 <= response.status_code < 300:  # 202: a research run started
            raise self._refused(method, path, response)
        return response

    def _call(self, method: str, path: str, model: type[T], timeout_s: float, *,
              body: BaseModel | None = None, content: str | None = None,
              params: dict[str, str | int] | None = None) -> T:
        response = self._send(method, path, timeout_s, body=body, content=content, params=params)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise GuestError(f"{self._who}: agent {path} sent an unexpected body: "
                             f"{_one_line(exc)}") from exc

    # -- status -------------------------------------------------------------------------

    def health(self, timeout_s: float = 5.0) -> HealthResponse:
        return self._call("GET", "/health", HealthResponse, timeout_s)

    def wait_model(self, timeout_s: float = 300.0, model_id: str | None = None,
                   poll_s: float = 1.0) -> HealthResponse:
        """Wait until the agent serves a loaded model (``model_id``, if given).

        The agent answers /health while its model still loads; an unreachable agent
        (still starting) is waited for too. A model that failed to load fails at once.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                health = self.health()
            except GuestError:
                health = None
            if health is not None and health.status is AgentStatus.ERROR:
                raise GuestError(f"the agent's model failed to load: {health.error}")
            if (health is not None and health.status is AgentStatus.OK
                    and model_id in (None, health.model)):
                return health
            if time.monotonic() >= deadline:
                raise GuestError(f"the agent's model is not ready after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def info(self, timeout_s: float = 10.0) -> InfoResponse:
        return self._call("GET", "/info", InfoResponse, timeout_s)

    def model_status(self, timeout_s: float = 10.0) -> ModelStatus:
        return self._call("GET", "/model", ModelStatus, timeout_s)

    def security(self, since: int = 0, timeout_s: float = 5.0) -> GuestMetrics:
        """The guest's own security metrics, and its events numbered after ``since``."""
        return self._call("GET", "/security", GuestMetrics, timeout_s, params={"since": since})

    def flush(self, timeout_s: float = 10.0) -> MemoryFlushResponse:
        """Ask the agent to write memory and state to disk (before a save)."""
        return self._call("POST", "/memory/flush", MemoryFlushResponse, timeout_s)

    def sync_clock(self, timeout_s: float = 5.0) -> ClockResponse:
        """Set the guest clock to the host's (after a restore)."""
        return self._call("POST", "/clock", ClockResponse, timeout_s,
                          body=ClockRequest(epoch=time.time()))

    def take_identity(self, vm_name: str, token: str, seed: str, host_public: str,
                      host_private: str, timeout_s: float = 40.0) -> IdentityResponse:
        """Give a VM started from a template its own identity (this client keeps the
        old token: make a new client for the calls after)."""
        return self._call("POST", "/identity", IdentityResponse, timeout_s,
                          body=IdentityRequest(vm_name=vm_name, token=token, seed=seed,
                                               host_public=host_public,
                                               host_private=host_private))

    # -- chat ---------------------------------------------------------------------------

    def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        body = request.model_copy(update={"stream": False})
        return self._call("POST", "/v1/chat/completions", ChatCompletionResponse,
                          CHAT_TIMEOUT_S, body=body)

    def chat_stream(self, request: ChatCompletionRequest) -> Iterator[ChatCompletionChunk]:
        """Server-sent chunks as they come; the last carries usage and the Somnus report."""
        body = request.model_copy(update={"stream": True})
        for data in self._events("POST", "/v1/chat/completions", CHAT_TIMEOUT_S, "chat",
                                 body=body):
            if data == "[DONE]":
                return
            yield self._chunk(data)

    def run_stream(self, request: RunRequest) -> Iterator[RunEvent]:
        """A sandboxed run's events as they come (artifacts VM); the last is its result."""
        for data in self._events("POST", "/runs", RUN_TIMEOUT_S, "run", body=request):
            try:
                yield RunEvent.model_validate_json(data)
            except ValidationError as exc:
                raise GuestError(f"{self._who}: agent run sent an unexpected event: "
                                 f"{_one_line(data)}") from exc

    def run_file(self, run_id: str, path: str, timeout_s: float = 60.0) -> bytes:
        """A file a run produced."""
        return self._send("GET", f"/runs/{run_id}/files/{path}", timeout_s).content

    def web_open(self, request: WebRequest, timeout_s: float = 120.0) -> WebStatus:
        """Serve a web artifact on the VM's web port (replacing the open one)."""
        return self._call("POST", "/web", WebStatus, timeout_s, body=request)

    def web_status(self, timeout_s: float = 10.0) -> WebStatus:
        return self._call("GET", "/web", WebStatus, timeout_s)

    def web_stop(self, timeout_s: float = 30.0) -> WebStatus:
        return self._call("DELETE", "/web", WebStatus, timeout_s)

    def _events(self, method: str, path: str, timeout: Timeout, what: str, *,
                body: BaseModel | None = None,
                params: dict[str, str | int] | None = None) -> Iterator[str]:
        """The ``data:`` payloads of a server-sent event stream (comments are dropped)."""
        headers = {**self.headers, "Content-Type": JSON} if body is not None else self.headers
        answered = False
        try:
            with httpx.stream(method, self.base_url + path, headers=headers, params=params,
                              content=body.model_dump_json() if body is not None else None,
                              timeout=timeout, verify=_tls()) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refused(method, path, response)
                answered = True
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        yield line[5:].strip()
        except httpx.HTTPError as exc:
            if not answered:
                raise self._unreachable(exc) from exc
            raise GuestError(f"{self._who}: agent {what} stream broke: {_reason(exc)}") from exc

    def _chunk(self, data: str) -> ChatCompletionChunk:
        try:
            return ChatCompletionChunk.model_validate_json(data)
        except ValidationError as exc:
            # Past the status line the agent reports a failure in-band: {"error": ...}.
            try:
                failure = ErrorResponse.model_validate_json(data)
            except ValidationError:
                raise GuestError(f"{self._who}: agent chat sent an unexpected chunk: "
                                 f"{_one_line(data)}") from exc
            raise GuestError(f"{self._who}: agent chat failed mid-stream: "
                             f"{_one_line(failure.error)}") from None

    def last_prompt(self) -> PromptInspection:
        return self._call("GET", "/prompt/last", PromptInspection, 10.0)

    # -- memory -------------------------------------------------------------------------

    def memory_add(self, item: MemoryCreate, background: bool = False) -> MemoryAddResponse:
        """Store a memory; ``background`` returns once it is stored, before it is embedded."""
        if background:
            return self._call("POST", "/memory", MemoryAddResponse, 30.0, body=item,
                              params={"background": "true"})
        # Embedding a 512-token document under TCG takes minutes: wait as long as for chat.
        return self._call("POST", "/memory", MemoryAddResponse, CHAT_TIMEOUT_S, body=item)

    def memory_search(self, request: MemorySearchRequest) -> MemorySearchResponse:
        return self._call("POST", "/memory/search", MemorySearchResponse, 120.0, body=request)

    def memory_list(self, offset: int = 0, limit: int = 100,
                    memory_type: MemoryType | None = None) -> MemoryListResponse:
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        if memory_type is not None:
            params["memory_type"] = memory_type.value
        return self._call("GET", "/memory", MemoryListResponse, 30.0, params=params)

    def memory_export(self) -> str:
        """Every memory as JSON lines (the import format)."""
        return self._send("GET", "/memory/export", 120.0).text

    def memory_import(self, jsonl: str) -> MemoryImportResponse:
        return self._call("POST", "/memory/import", MemoryImportResponse, 600.0, content=jsonl)

    # -- collaboration ------------------------------------------------------------------

    def collab_turn(self, request: TurnRequest, timeout_s: float = 3600.0) -> TurnReply:
        """One turn in an agent VM: minutes under TCG (up to three decodes), hence the
        long timeout."""
        return self._call("POST", "/collab/turn", TurnReply, timeout_s, body=request)

    # -- research -----------------------------------------------------------------------

    def research_start(self, request: ResearchRequest, timeout_s: float = 30.0
                       ) -> ResearchRunView:
        """Start a run (the agent answers 202 at once; 409 if the run id exists)."""
        return self._call("POST", "/research/runs", ResearchRunView, timeout_s, body=request)

    def research_runs(self, timeout_s: float = 30.0) -> ResearchRunList:
        return self._call("GET", "/research/runs", ResearchRunList, timeout_s)

    def research_run(self, run_id: str, timeout_s: float = 30.0) -> ResearchRunView:
        return self._call("GET", f"/research/runs/{run_id}", ResearchRunView, timeout_s)

    def research_events(self, run_id: str, after: int = 0, follow: bool = True,
                        timeout_s: float | None = None) -> Iterator[ResearchEvent]:
        """A run's events numbered after ``after``; with ``follow`` until the run finishes.
        ``timeout_s`` bounds the wait between two bytes (keepalives come in between)."""
        timeout = httpx.Timeout(timeout_s or RESEARCH_EVENTS_TIMEOUT_S, connect=10.0)
        params: dict[str, str | int] = {"after": after, "follow": "true" if follow else "false"}
        for data in self._events("GET", f"/research/runs/{run_id}/events", timeout, "research",
                                 params=params):
            try:
                yield ResearchEvent.model_validate_json(data)
            except ValidationError as exc:
                raise GuestError(f"{self._who}: agent research sent an unexpected event: "
                                 f"{_one_line(data)}") from exc

    def research_cancel(self, run_id: str, timeout_s: float = 30.0) -> ResearchRunView:
        return self._call("POST", f"/research/runs/{run_id}/cancel", ResearchRunView, timeout_s)

    def research_resume(self, run_id: str, timeout_s: float = 30.0) -> ResearchRunView:
        """Resume a stopped run at the stage it had reached (409 if it completed)."""
        return self._call("POST", f"/research/runs/{run_id}/resume", ResearchRunView, timeout_s)

    def research_report(self, run_id: str, timeout_s: float = 60.0) -> ResearchReport:
        """A finished run's report (409 while it runs)."""
        return self._call("GET", f"/research/runs/{run_id}/report", ResearchReport, timeout_s)

    def corpus_add(self, doc: CorpusDocumentIn,
                   timeout_s: float = CORPUS_TIMEOUT_S) -> CorpusDocument:
        return self._call("POST", "/research/corpus", CorpusDocument, timeout_s, body=doc)

    def corpus_list(self, timeout_s: float = 30.0) -> CorpusList:
        return self._call("GET", "/research/corpus", CorpusList, timeout_s)

    def corpus_remove(self, doc_id: str, timeout_s: float = 30.0) -> CorpusDocument:
        return self._call("DELETE", f"/research/corpus/{doc_id}", CorpusDocument, timeout_s)

    def research_fetches(self, wait_s: int = 10) -> FetchRequestList:
        """What runs wait for from the web; a long poll of up to ``wait_s`` (0-30) seconds."""
        return self._call("GET", "/research/fetches", FetchRequestList, wait_s + 15.0,
                          params={"wait": wait_s})

    def research_answer(self, fetch_id: str, result: FetchResult,
                        timeout_s: float = 120.0) -> bool:
        """Hand a run the answer to its fetch request (404: no run waits for it now)."""
        response = self._send("POST", f"/research/fetches/{fetch_id}", timeout_s, body=result)
        try:
            return bool(response.json().get("accepted", False))
        except (ValueError, AttributeError) as exc:
            raise GuestError(f"{self._who}: agent /research/fetches sent an unexpected body: "
                             f"{_one_line(response.text)}") from exc
