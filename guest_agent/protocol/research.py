"""Research runs: what the host asks the research VM's agent to research, and what comes back.

A run goes through fixed stages (``ResearchStage``), each persisted on the VM's disk as it
completes, so a run resumes at the stage it had reached. The host follows a run's events
(``GET /research/runs/{id}/events``, server-sent ``ResearchEvent``s) and fetches its
report (``ResearchReport``: claims, each citing a numbered source and the quoted span it
rests on).

The guest has no network. Web pages reach a run through the host: the run queues a
``FetchRequest``; the host's fetch proxy takes the queue (``GET /research/fetches``), checks
the user's allow-list, fetches, and posts a ``FetchResult`` back. Corpus documents are sent
in whole (``CorpusDocumentIn``) and indexed in the VM.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StrictInt

RESEARCH_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{3,39}$"
RESEARCH_ID_RE = re.compile(RESEARCH_ID_PATTERN)
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024  # one corpus document or fetched page, raw
Scalar = str | int | float | bool | None


class ResearchMode(StrEnum):
    """The research dropdown; each mode names its roles and its shape
    (``guest_agent.research.modes``)."""

    QUICK = "quick"  # one pass: a round of queries, notes, a short report
    STANDARD = "standard"  # rounds up to --depth (at most 2), an outline, a report
    DEEP = "deep"  # recursive follow-up rounds to --depth, a Deep Investigator's questions
    FACT_CHECK = "fact-check"  # a claim in; a verdict and its evidence out
    COMPARE = "compare"  # two or more subjects side by side


class SourceScope(StrEnum):
    CORPUS = "corpus"
    WEB = "web"
    BOTH = "both"


class ResearchStage(StrEnum):
    """The pipeline's stages, in order. queries → notes repeat once per depth round."""

    BRIEF = "brief"  # the question restated, sub-questions, a plan
    QUERIES = "queries"
    SEARCH = "search"
    FETCH = "fetch"
    EXTRACT = "extract"
    NOTES = "notes"  # per source: a summary and the exact passages used
    OUTLINE = "outline"
    REPORT = "report"


class ResearchStatus(StrEnum):
    """The original design's ``ResearchStatus``."""

    PLANNING = "planning"  # queued, or writing the brief
    ACTIVE = "active"  # queries, search, fetch, extract, notes
    PAUSED = "paused"  # waiting for the host's fetch proxy
    ANALYZING = "analyzing"  # (kept for the original's enum; compressing findings)
    SYNTHESIZING = "synthesizing"  # outline, report
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"


FINISHED = frozenset({ResearchStatus.COMPLETED, ResearchStatus.ERROR, ResearchStatus.CANCELLED})


class StopReason(StrEnum):
    """Why a run stopped gathering: it was done, or a hard budget was reached.

    A budget never loses the work: the run writes its report from what it has,
    with deterministic fallbacks where a model call no longer fits."""

    DONE = "done"
    MODEL_CALLS = "model_calls"
    TOKENS = "tokens"
    SOURCES = "sources"
    TIME = "time"
    CANCELLED = "cancelled"
    ERROR = "error"


class RoleSlot(StrEnum):
    """The parts a mode casts; ``ResearchRequest.roles`` may recast any with a user role."""

    PLANNER = "planner"  # brief and first queries (default: Researcher)
    INVESTIGATOR = "investigator"  # follow-up queries (Researcher, or Deep Investigator)
    ANALYST = "analyst"  # notes and compression (Analyst)
    SYNTHESIZER = "synthesizer"  # outline and report (Synthesizer)
    FACT_CHECKER = "fact_checker"  # the verdict (Fact-checker)


class Verdict(StrEnum):
    SUPPORTED = "supported"
    REFUTED = "refuted"
    INSUFFICIENT = "insufficient evidence"


class ResearchRequest(BaseModel):
    """``POST /research/runs``: one research run."""

    run_id: Annotated[str, Field(pattern=RESEARCH_ID_PATTERN)]
    question: str = Field(min_length=3, max_length=2000)
    mode: ResearchMode = ResearchMode.STANDARD
    depth: StrictInt = Field(default=2, ge=1, le=5, description="rounds of follow-up questions")
    breadth: StrictInt = Field(default=4, ge=1, le=8,
                               description="queries per round; max(2, breadth // 2) at each level")
    sources: SourceScope = SourceScope.CORPUS
    max_sources: StrictInt = Field(default=8, ge=1, le=50)
    budget_tokens: StrictInt = Field(default=60_000, ge=0, le=10_000_000,
                                     description="prompt + completion tokens, all calls")
    budget_minutes: StrictInt = Field(default=30, ge=1, le=1440)
    max_model_calls: StrictInt = Field(default=60, ge=0, le=1000)
    subjects: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=6,
        description="compare mode; when empty they are read from the question ('A vs B')")
    roles: dict[RoleSlot, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict, description="recast a part with another (user-defined) role")


class ResearchUsage(BaseModel):
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0  # structured answers that did not parse and were asked again
    fallbacks: int = 0  # structured answers replaced by the deterministic fallback
    queries: int = 0
    repeated_queries: int = 0  # dropped before searching
    sources_read: int = 0
    elapsed_s: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ResearchEventKind(StrEnum):
    STAGE = "stage"  # a stage started (data: round)
    STAGE_DONE = "stage_done"
    QUERY = "query"
    REPEATED_QUERY = "repeated_query"
    SOURCE = "source"  # a source was read
    MODEL_CALL = "model_call"  # data: role, purpose, prompt_tokens, completion_tokens
    RETRY = "retry"
    FALLBACK = "fallback"
    BUDGET = "budget"  # a hard budget was reached (data: reason)
    WAITING = "waiting"  # for the host's fetch proxy
    MEMORY = "memory"  # earlier findings reused, or this run's stored
    STATUS = "status"  # the run's status changed (data: status)


class ResearchEvent(BaseModel):
    seq: int  # from 1, per run; a follower asks for the events after the last it saw
    at: float  # unix time
    kind: ResearchEventKind
    stage: ResearchStage | None = None
    message: str = ""
    data: dict[str, Scalar] = Field(default_factory=dict)


class ResearchRunView(BaseModel):
    """A run as ``GET /research/runs/{id}`` shows it."""

    run_id: str
    request: ResearchRequest
    status: ResearchStatus
    stage: ResearchStage | None = None  # the stage running, or the last one reached
    round: int = 0  # the depth round (1-based) of queries … notes
    stages_done: list[str] = Field(default_factory=list)  # "brief", "queries-1", …
    usage: ResearchUsage = Field(default_factory=ResearchUsage)
    stop_reason: StopReason | None = None
    error: str | None = None
    created_at: float
    updated_at: float
    last_event: int = 0


class ResearchRunList(BaseModel):
    runs: list[ResearchRunView]


class SourceKind(StrEnum):
    CORPUS = "corpus"
    WEB = "web"


class Source(BaseModel):
    """A source a report cites: ``n`` is its number in the report ([1], [2], …)."""

    n: int
    kind: SourceKind
    ref: str  # the URL, or the corpus document's path
    title: str
    doc_id: str  # the corpus document holding its text (web pages are stored too)


class Quote(BaseModel):
    """A passage copied from a source's text: ``text == document_text[start:end]``."""

    text: str
    start: int
    end: int


class SourceNote(BaseModel):
    """What the run took from one source for one query."""

    source: Source
    query: str
    summary: str
    quotes: list[Quote]
    round: int = 1


class Citation(BaseModel):
    n: int  # the source's number
    quote: str  # the quoted span the claim rests on (verbatim in the source)


class Claim(BaseModel):
    text: str
    citations: list[Citation] = Field(min_length=1)


class ReportSection(BaseModel):
    heading: str
    claims: list[Claim]


class ResearchReport(BaseModel):
    run_id: str
    question: str
    mode: ResearchMode
    title: str
    summary: str  # one paragraph, itself made of cited claims' text
    sections: list[ReportSection]
    sources: list[Source]
    verdict: Verdict | None = None  # fact-check
    subjects: list[str] = Field(default_factory=list)  # compare
    reused_runs: list[str] = Field(default_factory=list)  # earlier runs whose findings it used
    stop_reason: StopReason = StopReason.DONE
    usage: ResearchUsage = Field(default_factory=ResearchUsage)
    created_at: float


class DocumentFormat(StrEnum):
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"
    PDF = "pdf"


class CorpusDocumentIn(BaseModel):
    """``POST /research/corpus``: a document, whole; the VM extracts its text and indexes it."""

    ref: str = Field(min_length=1, max_length=2000, description="its path or URL, as cited")
    title: str | None = Field(default=None, max_length=500)
    format: DocumentFormat
    content_b64: str = Field(max_length=(MAX_DOCUMENT_BYTES * 4) // 3 + 4)
    kind: SourceKind = SourceKind.CORPUS


class CorpusDocument(BaseModel):
    doc_id: str
    ref: str
    title: str
    format: DocumentFormat
    kind: SourceKind
    chars: int  # of extracted text
    added_at: float
    replaced: bool = False  # the same ref was in the corpus and is now this version


class CorpusList(BaseModel):
    documents: list[CorpusDocument]


class FetchKind(StrEnum):
    FETCH = "fetch"
    SEARCH = "search"


class FetchRequest(BaseModel):
    """What a run asks the host's fetch proxy for."""

    fetch_id: str
    run_id: str
    kind: FetchKind
    url: str | None = None  # fetch
    query: str | None = None  # search
    limit: int = 5  # search results wanted


class FetchRequestList(BaseModel):
    requests: list[FetchRequest]


class SearchResult(BaseModel):
    url: str
    title: str = ""
    snippet: str = ""


class FetchResult(BaseModel):
    """The host's answer. ``ok`` False carries the one-line reason (e.g. not allowed)."""

    ok: bool
    error: str | None = None
    url: str | None = None  # after redirects
    status: int | None = None
    content_type: str | None = None
    title: str | None = None
    body_b64: str | None = Field(default=None, max_length=(MAX_DOCUMENT_BYTES * 4) // 3 + 4)
    results: list[SearchResult] = Field(default_factory=list)
    cached: bool = False
