"""Research: runs in the research VM (start, follow as server-sent events, cancel, resume,
report), its corpus, and the host's fetch proxy (allow-list, request log). Each handler is
one call into ``ResearchService``, as ``somnus research`` makes.

Web research needs someone to serve the VM's fetch requests: following a run's events
does, and ``somnus serve`` does whenever the research VM runs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from pydantic import Strict as StrictType

from api import sse
from api.context import Ctx
from api.models import PLAIN_TEXT, Strict
from api.routes.common import PROTECTED
from core.types import WHOLE
from guest_agent.protocol.research import (
    RESEARCH_ID_PATTERN,
    CorpusDocument,
    CorpusList,
    ResearchEvent,
    ResearchMode,
    ResearchReport,
    ResearchRequest,
    ResearchRunList,
    ResearchRunView,
    RoleSlot,
    SourceScope,
)
from orchestrator.research.export import MEDIA_TYPE, ReportFormat, render
from orchestrator.research.service import AllowedHost, FetchLogEntry

router = APIRouter(prefix="/research", tags=["research"], **PROTECTED)

# A host as the allow-list writes it: DNS labels or an IPv4 address, an optional port
# (1-65535). The CLI also takes URLs and IPv6 addresses; the document keeps to what it can
# state exactly.
_LABEL = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
HOST_PATTERN = f"^(?:{_LABEL}\\.)*{_LABEL}(?::{_PORT})?$"
RunIdPath = Annotated[str, Path(pattern=RESEARCH_ID_PATTERN, description="research run id")]
DocIdPath = Annotated[str, Path(pattern="^[A-Za-z0-9_-]{1,64}$",
                                description="corpus document id")]
HostPath = Annotated[str, Path(pattern=HOST_PATTERN, max_length=253,
                               description="host, as the allow-list writes it")]
_DEFAULTS = {name: field.default for name, field in ResearchRequest.model_fields.items()}


# Integers as JSON has them (3.0 is 3), with the protocol's bounds.
Depth = Annotated[int, StrictType(), Field(ge=1, le=5), WHOLE]
Breadth = Annotated[int, StrictType(), Field(ge=1, le=8), WHOLE]
MaxSources = Annotated[int, StrictType(), Field(ge=1, le=50), WHOLE]
Tokens = Annotated[int, StrictType(), Field(ge=0, le=10_000_000), WHOLE]
Minutes = Annotated[int, StrictType(), Field(ge=1, le=1440), WHOLE]
Calls = Annotated[int, StrictType(), Field(ge=0, le=1000), WHOLE]


class ResearchStart(Strict):
    """A research run (the protocol's ``ResearchRequest``; the host picks its id)."""

    question: str = Field(min_length=3, max_length=2000)
    mode: ResearchMode = _DEFAULTS["mode"]
    depth: Depth = Field(default=_DEFAULTS["depth"], description="rounds of follow-up questions")
    breadth: Breadth = Field(default=_DEFAULTS["breadth"], description="queries per round")
    sources: SourceScope = _DEFAULTS["sources"]
    max_sources: MaxSources = _DEFAULTS["max_sources"]
    budget_tokens: Tokens = Field(default=_DEFAULTS["budget_tokens"],
                                  description="prompt + completion tokens, all calls")
    budget_minutes: Minutes = _DEFAULTS["budget_minutes"]
    max_model_calls: Calls = _DEFAULTS["max_model_calls"]
    subjects: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=6,
        description="compare mode; when empty they are read from the question ('A vs B')")
    roles: dict[RoleSlot, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict, description="recast a part with another (user-defined) role")


class CorpusAdd(Strict):
    source: str = Field(min_length=1, max_length=4096, pattern=PLAIN_TEXT,
                        description="a file or folder on the host (its .html .htm .md "
                                    ".markdown .txt .rst .pdf files, recursively), or an "
                                    "http(s) URL, fetched through the proxy: the allow-list "
                                    "applies")


class CorpusAdded(BaseModel):
    documents: list[CorpusDocument]
    notes: list[str]  # what was skipped, and the steps taken


class AllowHost(Strict):
    host: str = Field(pattern=HOST_PATTERN, max_length=253,
                      description="example.org or 127.0.0.1:8765 (ports 80 and 443 are the "
                                  "host itself)")


STARTED: dict[int | str, dict[str, Any]] = {202: {
    "description": "started: follow `Location` + `/events`",
    "headers": {"Location": {"description": "the run", "required": True,
                             "schema": {"type": "string", "pattern": "^/research/runs/"
                                        + RESEARCH_ID_PATTERN.removeprefix("^")}}},
}}
REPORT_TYPES: dict[int | str, dict[str, Any]] = {200: {
    "description": "the report: JSON, Markdown or a self-contained HTML page (`format`)",
    "content": {MEDIA_TYPE[ReportFormat.MARKDOWN]: {"schema": {"type": "string"}},
                MEDIA_TYPE[ReportFormat.HTML]: {"schema": {"type": "string"}}},
}}


@router.post("/runs", status_code=202, responses=STARTED)
def start_run(body: ResearchStart, ctx: Ctx, response: Response) -> ResearchRunView:
    """Start a run in the research VM (activated if it is not running). Web sources need
    a host on the allow-list; follow the run's events to serve its web requests (or run
    `somnus serve`)."""
    view = ctx.host.research.start(**body.model_dump())
    response.headers["Location"] = f"/research/runs/{view.run_id}"
    return view


@router.get("/runs")
def list_runs(ctx: Ctx) -> ResearchRunList:
    """Every run, newest first (as the VM has them when it runs, else as the host last
    saw them)."""
    return ResearchRunList(runs=ctx.host.research.runs())


@router.get("/runs/{run_id}")
def run_status(run_id: RunIdPath, ctx: Ctx) -> ResearchRunView:
    """A run: status, stage, usage, stop reason."""
    return ctx.host.research.status(run_id)


@router.get("/runs/{run_id}/events", response_class=StreamingResponse,
            responses=sse.RESEARCH_EVENTS)
def run_events(run_id: RunIdPath, ctx: Ctx,
               after: Annotated[int, Query(ge=0, le=1_000_000_000,
                                           description="only the events after this seq")] = 0,
               ) -> StreamingResponse:
    """The run's events as they come, until it finishes, while the host serves its web
    requests; a finished run on a VM that is off has none to send."""
    events = sse.primed(ctx.host.research.follow(run_id, after))
    return sse.response(sse.model_events(events, event_id=_seq))


def _seq(event: ResearchEvent) -> int:
    return event.seq


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: RunIdPath, ctx: Ctx) -> ResearchRunView:
    """Stop a run; it writes its report from what it has."""
    return ctx.host.research.cancel(run_id)


@router.post("/runs/{run_id}/resume")
def resume_run(run_id: RunIdPath, ctx: Ctx) -> ResearchRunView:
    """Go on with a stopped run from the stage it had reached (409 if it completed)."""
    return ctx.host.research.resume(run_id)


@router.get("/runs/{run_id}/report", response_model=ResearchReport, responses=REPORT_TYPES)
def run_report(run_id: RunIdPath, ctx: Ctx,
               fmt: Annotated[ReportFormat, Query(alias="format")] = ReportFormat.JSON,
               ) -> Any:
    """A finished run's report: claims with numbered citations, sources with the quoted
    passages (409 while the run goes on)."""
    report = ctx.host.research.report(run_id)
    if fmt is ReportFormat.JSON:
        return report
    return Response(render(report, fmt), media_type=MEDIA_TYPE[fmt])


@router.get("/corpus")
def list_corpus(ctx: Ctx) -> CorpusList:
    """The research VM's corpus (the VM is activated if it is not running)."""
    return ctx.host.research.corpus_list()


@router.post("/corpus")
def add_corpus(body: CorpusAdd, ctx: Ctx) -> CorpusAdded:
    """Add a file, a folder's documents or a URL's to the corpus; the VM extracts and
    indexes each."""
    notes: list[str] = []
    documents = ctx.host.research.corpus_add(body.source, notes.append)
    return CorpusAdded(documents=documents, notes=notes)


@router.delete("/corpus/{doc_id}")
def remove_corpus(doc_id: DocIdPath, ctx: Ctx) -> CorpusDocument:
    """Take a document out of the corpus."""
    return ctx.host.research.corpus_remove(doc_id)


@router.get("/allowed")
def list_allowed(ctx: Ctx) -> list[AllowedHost]:
    """The hosts research may fetch from."""
    return ctx.host.research.allowed()


@router.post("/allowed", status_code=201)
def allow_host(body: AllowHost, ctx: Ctx) -> AllowedHost:
    """Let research fetch from a host (ports 80 and 443 unless one is named; not its
    subdomains). `somnus research allow HOST --crawl` also indexes it for search."""
    return ctx.host.research.allow(body.host)


@router.delete("/allowed/{host}", status_code=204)
def disallow_host(host: HostPath, ctx: Ctx) -> None:
    """Take a host off the allow-list."""
    ctx.host.research.disallow(host)


@router.get("/log")
def fetch_log(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    run_id: Annotated[str | None, Query(pattern=RESEARCH_ID_PATTERN,
                                        description="only this run's requests")] = None,
) -> list[FetchLogEntry]:
    """The fetch proxy's requests, newest first, refused ones too."""
    return ctx.host.research.fetch_log(limit, run_id)
