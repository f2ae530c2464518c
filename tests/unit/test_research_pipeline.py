"""The research pipeline: stages, resume, budgets, roles, verbatim citations.

Most tests drive the pipeline with a scripted fake runtime (answers chosen per call, so
broken JSON, repeats and failures can be scripted) over a small in-memory corpus and web;
the last ones run every mode with the real SmolLM2 on the host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guest_agent.memory.manager import MemoryManager
from guest_agent.prompts.manager import RoleRegistry
from guest_agent.protocol import AIModelConfiguration, RoleDefinition
from guest_agent.protocol.research import (
    CorpusDocument,
    CorpusDocumentIn,
    DocumentFormat,
    FetchResult,
    ResearchEventKind,
    ResearchMode,
    ResearchReport,
    ResearchRequest,
    ResearchStatus,
    RoleSlot,
    SearchResult,
    SourceKind,
    SourceScope,
    StopReason,
)
from guest_agent.research import stages as st
from guest_agent.research.extract import best_passages, best_quote, fit_quote, spans, terms
from guest_agent.research.folder import Cancelled, RunFolder
from guest_agent.research.llm import MAX_ATTEMPTS, ResearchModel
from guest_agent.research.memory import ResearchMemory
from guest_agent.research.modes import (
    MODES,
    BadResearchRequest,
    cast,
    round_breadth,
    subjects,
)
from guest_agent.research.pipeline import (
    Passage,
    Pipeline,
    WebUnavailable,
    normalise,
)
from guest_agent.runtime import Embeddings, ModelRuntime, Piece, SamplingParams
from guest_agent.structured import json_grammar
from tests.unit.conftest import model_config

E = ResearchEventKind

DOCS = {
    "docs/with.md": (
        "The with statement",
        "# The with statement\n\nThe with statement wraps a block of code in the methods of "
        "a context manager. A context manager defines __enter__ and __exit__.\n\nThe "
        "__exit__ method runs even when the block raises an exception, so files opened "
        "with the with statement are always closed. Resources such as locks are released "
        "the same way.",
    ),
    "docs/comprehensions.md": (
        "List comprehensions",
        "List comprehensions build a new list from an iterable in one expression. A "
        "comprehension such as [x * x for x in range(10)] is usually faster than an "
        "equivalent for loop that appends.\n\nA condition can filter items: [x for x in "
        "data if x > 0]. Nested comprehensions are harder to read.",
    ),
    "docs/gil.md": (
        "The global interpreter lock",
        "The global interpreter lock (GIL) lets only one thread execute Python bytecode "
        "at a time. Threads still help with I/O bound work, because the GIL is released "
        "while waiting for I/O.\n\nCPU bound work gains from processes instead of threads. "
        "Python 3.13 offers an experimental free-threaded build without the GIL.",
    ),
    "docs/go.md": (
        "Go goroutines",
        "Go runs goroutines on all CPU cores, so CPU bound work scales with threads in Go. "
        "Goroutines are cheap: a program can start thousands of them. Go has no global "
        "interpreter lock.",
    ),
}
PAGES = {
    "https://example.org/with": ("With statement guide",
                                 "The with statement closes files for you. It calls "
                                 "__exit__ when the block ends, even after an exception."),
    "https://example.org/gil": ("GIL explained",
                                "The GIL allows one thread at a time to run Python code. "
                                "Multiprocessing avoids the GIL for CPU bound tasks."),
    "https://blocked.example/gil": ("Blocked", "The GIL is never shown."),
    "https://down.example/gil": ("Down", "The GIL is never shown either."),
}


# -- fakes -------------------------------------------------------------------------------


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def kv_get(self, key: str) -> str | None:
        return self.data.get(key)

    def kv_set(self, key: str, value: str) -> None:
        self.data[key] = value


def purpose_of(prompt: str) -> str:
    """Which pipeline call a prompt is (read from its instruction)."""
    user = prompt.rsplit("<user>", 1)[-1]
    for needle, purpose in (("Restate the", "brief"), ("still leave open", "follow-up"),
                            ("search queries", "queries"), ("Summarise", "notes"),
                            ("learnings", "compress"), ("Plan a short report", "outline"),
                            ("Weigh the findings", "verdict"), ("claims", "claims")):
        if needle in user:
            return purpose
    raise AssertionError(f"unknown call: {user[:200]}")


@dataclass
class Call:
    purpose: str
    prompt: str
    params: SamplingParams


@dataclass
class FakeRuntime:
    """Tokens are whitespace-separated words. Each call is answered from ``script``
    (purpose -> answers to give first), else by a well-formed default answer."""

    script: dict[str, list[str]] = field(default_factory=dict)
    n_ctx: int = 4096
    fail_at: int | None = None  # raise on this call (1-based)
    on_call: Callable[[int], None] | None = None
    config: AIModelConfiguration = field(default_factory=AIModelConfiguration)
    calls: list[Call] = field(default_factory=list)
    vocab: dict[str, int] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)

    def tokenize(self, text: str) -> list[int]:
        out = []
        for word in text.split():
            if word not in self.vocab:
                self.vocab[word] = len(self.words)
                self.words.append(word)
            out.append(self.vocab[word])
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        return " ".join(self.words[t] for t in tokens)

    def prompt_tokens(self, prompt: str) -> list[int]:
        return self.tokenize(prompt)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def render_chat(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[str]]:
        return "\n".join(f"<{m['role']}> {m['content']}" for m in messages) + "\n<assistant>", []

    def generate(self, prompt_tokens: list[int], params: SamplingParams) -> Iterator[Piece]:
        assert len(prompt_tokens) + params.max_tokens <= self.n_ctx, "prompt overflows n_ctx"
        assert params.grammar, "every research call is grammar-constrained"
        prompt = self.detokenize(prompt_tokens)
        purpose = purpose_of(prompt)
        self.calls.append(Call(purpose, prompt, params))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        if self.fail_at == len(self.calls):
            raise RuntimeError(f"injected failure at call {len(self.calls)}")
        queue = self.script.get(purpose)
        text = queue.pop(0) if queue else default_answer(purpose, prompt)
        yield Piece(text, "stop")

    def purposes(self) -> list[str]:
        return [c.purpose for c in self.calls]


def default_answer(purpose: str, prompt: str) -> str:
    user = prompt.rsplit("<user>", 1)[-1]
    at_most = re.search(r"at most (\d+)", user)
    n = int(at_most.group(1)) if at_most else 2
    numbers = sorted({int(x) for x in re.findall(r"\[(\d+)\]", prompt)}) or [1]
    topic = "with statement" if "with" in user else "python"
    if purpose == "brief":
        return json.dumps({"restated": f"What about the {topic}?",
                           "sub_questions": [f"{topic} question {i}" for i in range(n)][:n],
                           "plan": "Search, read, report."})
    if purpose in ("queries", "follow-up"):
        words = ["with statement", "context manager", "exception exit", "files closed",
                 "global interpreter lock", "threads", "list comprehensions", "goroutines"]
        seed = len(prompt) % len(words)
        return json.dumps({"queries": [words[(seed + i) % len(words)] for i in range(n)]})
    if purpose == "notes":
        return json.dumps({"summary": "The passages explain how it works."})
    if purpose == "compress":
        return json.dumps({"learnings": [{"text": f"Learning from {k}", "source": k}
                                         for k in numbers[:6]]})
    if purpose == "outline":
        return json.dumps({"title": "A short report", "sections": [
            {"heading": "Main points", "sources": numbers[:4]},
            {"heading": "Details", "sources": numbers[-1:]}]})
    if purpose == "claims":
        return json.dumps({"claims": [{"text": f"Source {k} explains the exit method.",
                                       "source": k} for k in numbers[:2]]})
    if purpose == "verdict":
        return json.dumps({"verdict": "supported", "explanation": "The sources agree.",
                           "source": numbers[0]})
    raise AssertionError(purpose)


class FakeCorpus:
    """A keyword search over a few documents (``CorpusSearch``)."""

    def __init__(self, docs: dict[str, tuple[str, str]] | None = None) -> None:
        self.docs: dict[str, CorpusDocument] = {}
        self.texts: dict[str, str] = {}
        for ref, (title, text) in (DOCS if docs is None else docs).items():
            self._store(ref, title, text, SourceKind.CORPUS)

    def _store(self, ref: str, title: str, text: str, kind: SourceKind) -> CorpusDocument:
        doc_id = hashlib.sha1(ref.encode()).hexdigest()[:12]
        doc = CorpusDocument(doc_id=doc_id, ref=ref, title=title, format=DocumentFormat.TEXT,
                             kind=kind, chars=len(text), added_at=0.0)
        self.docs[doc_id], self.texts[doc_id] = doc, text
        return doc

    def search(self, query: str, top_k: int) -> list[Passage]:
        wanted = set(terms(query))
        scored = []
        for doc_id, doc in self.docs.items():
            score = len(wanted & set(terms(self.texts[doc_id])))
            if score:
                text = self.texts[doc_id]
                scored.append(Passage(doc_id=doc_id, ref=doc.ref, title=doc.title,
                                      kind=doc.kind, text=text[:200], start=0,
                                      end=min(200, len(text)), score=float(score)))
        return sorted(scored, key=lambda p: -p.score)[:top_k]

    def text(self, doc_id: str) -> str:
        return self.texts[doc_id]

    def add(self, doc: CorpusDocumentIn) -> CorpusDocument:
        text = base64.b64decode(doc.content_b64).decode()
        return self._store(doc.ref, doc.title or doc.ref, text, doc.kind)

    def find_ref(self, ref: str) -> CorpusDocument | None:
        return next((d for d in self.docs.values() if d.ref == ref), None)


class FakeWeb:
    """Search over PAGES; blocked.example is refused, down.example has no proxy."""

    def __init__(self) -> None:
        self.fetched: list[str] = []

    def search(self, run_id: str, query: str, limit: int) -> list[SearchResult]:
        wanted = set(terms(query))
        return [SearchResult(url=url, title=title) for url, (title, text) in PAGES.items()
                if wanted & set(terms(text))][:limit]

    def fetch(self, run_id: str, url: str) -> FetchResult:
        self.fetched.append(url)
        if url.startswith("https://down."):
            raise WebUnavailable("the fetch proxy did not answer")
        if url.startswith("https://blocked."):
            return FetchResult(ok=False, error="blocked.example is not on the allow-list")
        title, text = PAGES[url]
        return FetchResult(ok=True, url=url, status=200, content_type="text/plain",
                           title=title, body_b64=base64.b64encode(text.encode()).decode())


class FakeEmbedder:
    """Hashed bag of words: enough meaning for memory tests, no model."""

    embedding_model_id = "fake-bow"
    embedding_dim = 64

    def embed(self, texts: Sequence[str], truncate: bool) -> Embeddings:
        vectors = np.zeros((len(texts), self.embedding_dim), np.float32)
        for i, text in enumerate(texts):
            for word in terms(text):
                vectors[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
            norm = np.linalg.norm(vectors[i])
            vectors[i] = vectors[i] / norm if norm else vectors[i]
        return Embeddings(vectors, [len(t.split()) for t in texts], [False] * len(texts))

    def fits_embedding(self, text: str, spare: int = 0) -> bool:
        return len(text.split()) + spare < 2000


@dataclass
class Run:
    folder: RunFolder
    runtime: FakeRuntime
    corpus: FakeCorpus
    roles: RoleRegistry

    def pipeline(self, web: FakeWeb | None = None, memory: ResearchMemory | None = None,
                 clock: Callable[[], float] = time.time) -> Pipeline:
        model = ResearchModel(self.runtime, self.roles)
        return Pipeline(self.folder, model, self.corpus, web, memory, clock)

    def events(self, kind: ResearchEventKind | None = None) -> list[Any]:
        return [e for e in self.folder.events() if kind is None or e.kind is kind]


def new_run(tmp_path: Path, runtime: FakeRuntime | None = None, run_id: str = "run-1",
            registry: RoleRegistry | None = None, corpus: FakeCorpus | None = None,
            **request: Any) -> Run:
    fields = {"question": "How does the with statement close files?", **request}
    folder = RunFolder(tmp_path / run_id)
    folder.create(ResearchRequest(run_id=run_id, **fields), time.time())
    return Run(folder, runtime or FakeRuntime(), corpus or FakeCorpus(),
               registry or RoleRegistry(DictStore()))


def assert_verbatim(report: ResearchReport, corpus: FakeCorpus) -> int:
    """Every citation's quote occurs in its source's text; returns how many there are."""
    sources = {s.n: s for s in report.sources}
    count = 0
    for section in report.sections:
        for claim in section.claims:
            assert claim.text.strip()
            for citation in claim.citations:
                source = sources[citation.n]
                assert citation.quote and citation.quote in corpus.text(source.doc_id)
                count += 1
    cited = {c.n for s in report.sections for cl in s.claims for c in cl.citations}
    assert cited == set(sources)
    return count


def stage_keys(run: Run) -> list[str]:
    return [str(e.data["key"]) for e in run.events(E.STAGE)]


# -- extract -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    DOCS["docs/with.md"][1],
    "  Leading space.  Two spaces between.\n\n\n  Indented paragraph here!  ",
    "- item one with statement\n- item two\n# Heading\nBody text. More (text.) here?",
    "word " * 300,
    "Ünïcödé sentence — with dashes “quoted.” Next one.",
    "nopunctuationatall" * 40,
])
def test_every_quote_is_exact_text_at_its_offsets(text: str) -> None:
    for start, end in spans(text):
        assert text[start:end] == text[start:end].strip() and text[start:end]
    for query in ("with statement exception", "item", "nothing matches zzz", ""):
        quotes = best_passages(text, query, k=2, max_chars=120)
        assert quotes, "a source always gives a quote"
        assert [q.start for q in quotes] == sorted(q.start for q in quotes)
        for q in quotes:
            assert text[q.start:q.end] == q.text and q.text == q.text.strip()
            assert 0 < len(q.text) <= 120


def test_best_passages_ranks_by_the_query_and_cuts_at_word_boundaries() -> None:
    text = DOCS["docs/gil.md"][1]
    [quote] = best_passages(text, "processes for CPU bound work", k=1)
    assert quote.text == "CPU bound work gains from processes instead of threads."
    long = "Filler words come first here. " + "alpha beta gamma " * 30 + "the exit method runs."
    quote2 = fit_quote(long, 0, len(long), max_chars=60, query="exit method")
    assert quote2 is not None and long[quote2.start:quote2.end] == quote2.text
    assert "exit method" in quote2.text and len(quote2.text) <= 60
    assert quote2.start == 0 or long[quote2.start - 1].isspace()
    assert quote2.end == len(long) or long[quote2.end].isspace()
    assert fit_quote("   ", 0, 3) is None
    quotes = best_passages(text, "threads")
    best = best_quote(quotes, "processes instead of threads")
    assert best is not None and "processes" in best.text


# -- modes -------------------------------------------------------------------------------


def test_modes_are_data() -> None:
    assert MODES[ResearchMode.QUICK].depth(5) == 1 and MODES[ResearchMode.QUICK].breadth(4) == 2
    assert MODES[ResearchMode.STANDARD].depth(5) == 2
    assert MODES[ResearchMode.DEEP].depth(5) == 5 and not MODES[ResearchMode.QUICK].outline
    assert MODES[ResearchMode.DEEP].roles[RoleSlot.INVESTIGATOR] == "Deep Investigator"
    assert MODES[ResearchMode.FACT_CHECK].roles[RoleSlot.FACT_CHECKER] == "Fact-checker"
    assert [round_breadth(8, r) for r in (1, 2, 3, 4)] == [8, 4, 2, 2]
    assert [round_breadth(4, r) for r in (1, 2, 3)] == [4, 2, 2]
    assert [round_breadth(1, r) for r in (1, 2)] == [1, 1]
    roles = RoleRegistry(DictStore())
    request = ResearchRequest(run_id="run-1", question="q?!", mode=ResearchMode.DEEP,
                              roles={RoleSlot.ANALYST: "synthesizer"})
    chosen = cast(request, roles)
    assert chosen[RoleSlot.ANALYST] == "Synthesizer"
    assert chosen[RoleSlot.INVESTIGATOR] == "Deep Investigator"


@pytest.mark.parametrize(("question", "expected"), [
    ("Python vs Go: which is faster?", ["Python", "Go"]),
    ("Compare tabs versus spaces", ["tabs", "spaces"]),
    ("Compare SQLite, Postgres and MySQL", ["SQLite", "Postgres", "MySQL"]),
    ("What are the differences between threads and processes?", ["threads", "processes"]),
])
def test_compare_subjects_come_from_the_question(question: str, expected: list[str]) -> None:
    request = ResearchRequest(run_id="run-1", question=question, mode=ResearchMode.COMPARE)
    assert subjects(request) == expected
    given = request.model_copy(update={"subjects": ["A", "B"]})
    assert subjects(given) == ["A", "B"]


def test_compare_without_two_subjects_is_one_line() -> None:
    request = ResearchRequest(run_id="run-1", question="Is Python fast?",
                              mode=ResearchMode.COMPARE)
    with pytest.raises(BadResearchRequest, match="two or more subjects") as info:
        subjects(request)
    assert "\n" not in str(info.value)


def test_answer_grammars_forbid_raw_control_characters_in_strings() -> None:
    import llama_cpp

    gbnf = json_grammar(json.dumps(st.claims_answer((1, 3)).model_json_schema()))
    [char] = [line for line in gbnf.splitlines() if line.startswith("char ::=")]
    assert "\\x00-\\x1F" in char and '"1" | "3"' in gbnf
    llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp parses it


# -- folder ------------------------------------------------------------------------------


def test_folder_persists_state_events_and_stages(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    folder = run.folder
    assert folder.view().status is ResearchStatus.PLANNING and folder.request().run_id == "run-1"
    assert [folder.emit(E.QUERY, "q").seq for _ in range(3)] == [1, 2, 3]
    with (folder.path / "events.jsonl").open("a") as f:
        f.write('{"seq": 4, "at": 1.0, "ki')  # a crash mid-append
    again = RunFolder(folder.path)
    assert again.emit(E.QUERY, "after a restart").seq == 4
    assert [e.seq for e in again.events()] == [1, 2, 3, 4] and again.view().last_event == 4
    assert [e.seq for e in again.events(after=2)] == [3, 4]
    assert [e.seq for e in again.events(after=3)] == [4]  # past the torn line
    folder.save_stage("brief", st.Brief(restated="r", sub_questions=["s"], plan="p"))
    assert folder.load_stage("brief", st.Brief) is not None
    assert folder.view().stages_done == ["brief"]
    (folder.path / "stages" / "brief.json").write_text("{not json")
    assert folder.load_stage("brief", st.Brief) is None  # corrupt: done again
    folder.request_cancel()
    assert folder.cancel_requested()
    folder.clear_cancel()
    assert not folder.cancel_requested()
    with pytest.raises(ValueError, match="no field"):
        folder.update(nonsense=1)
    assert folder.report() is None


# -- end to end with the fake ------------------------------------------------------------

ORDER = ["brief", "queries-1", "search-1", "fetch-1", "extract-1", "notes-1", "compress-1"]


@pytest.mark.parametrize(("mode", "question", "roles"), [
    (ResearchMode.QUICK, "How does the with statement close files?",
     {"Researcher", "Analyst", "Synthesizer"}),
    (ResearchMode.STANDARD, "How does the with statement close files?",
     {"Researcher", "Analyst", "Synthesizer"}),
    (ResearchMode.DEEP, "How does the with statement close files?",
     {"Researcher", "Deep Investigator", "Analyst", "Synthesizer"}),
    (ResearchMode.FACT_CHECK, "The with statement closes files after an exception.",
     {"Researcher", "Analyst", "Synthesizer", "Fact-checker"}),
    (ResearchMode.COMPARE, "Python threads vs Go goroutines",
     {"Researcher", "Analyst", "Synthesizer"}),
])
def test_each_mode_completes_with_verbatim_citations(
        tmp_path: Path, mode: ResearchMode, question: str, roles: set[str]) -> None:
    run = new_run(tmp_path, mode=mode, question=question, depth=2, breadth=3)
    report = run.pipeline().run()
    keys = stage_keys(run)
    assert keys[:len(ORDER)] == ORDER
    assert keys[-1] == "report" and ("outline" in keys) is (mode is not ResearchMode.QUICK)
    assert run.folder.view().stages_done == keys  # each stage once, in order
    assert assert_verbatim(report, run.corpus) >= 1
    assert {str(e.data["role"]) for e in run.events(E.MODEL_CALL)} == roles
    view = run.folder.view()
    assert view.status is ResearchStatus.COMPLETED and view.stop_reason is StopReason.DONE
    assert run.folder.report() == report and report.mode is mode
    assert view.usage.model_calls == len(run.runtime.calls) and view.usage.sources_read > 0
    if mode is ResearchMode.FACT_CHECK:
        assert report.verdict is not None and report.sections[0].heading == "Verdict"
    if mode is ResearchMode.COMPARE:
        assert report.subjects == ["Python threads", "Go goroutines"]
    if mode is ResearchMode.QUICK:
        assert len(report.sections) == 1 and "outline" not in run.runtime.purposes()


def test_breadth_shrinks_per_round(tmp_path: Path) -> None:
    run = new_run(tmp_path, mode=ResearchMode.DEEP, depth=3, breadth=4)
    run.pipeline().run()
    asked = [int(m.group(1)) for c in run.runtime.calls if c.purpose in ("queries", "follow-up")
             if (m := re.search(r"at most (\d+) short", c.prompt))]
    assert asked == [4, 2, 2]
    sizes = [len(q.queries) for r in (1, 2, 3)
             if (q := run.folder.load_stage(f"queries-{r}", st.QueryRound)) is not None]
    assert sizes[0] == 4 and all(n <= 2 for n in sizes[1:])


def test_repeated_queries_are_dropped_and_counted(tmp_path: Path) -> None:
    script = {"queries": [json.dumps({"queries": ["with statement", "With  statement!",
                                                  "context manager"]})],
              "follow-up": [json.dumps({"queries": ["context manager", "exception exit"]})]}
    run = new_run(tmp_path, FakeRuntime(script=script), mode=ResearchMode.DEEP, depth=2,
                  breadth=3)
    run.pipeline().run()
    first = run.folder.load_stage("queries-1", st.QueryRound)
    second = run.folder.load_stage("queries-2", st.QueryRound)
    assert first is not None and second is not None
    assert first.queries == ["with statement", "context manager"]
    assert second.queries == ["exception exit"] and second.repeated == ["context manager"]
    assert [e.message for e in run.events(E.REPEATED_QUERY)] == ["With  statement!",
                                                                 "context manager"]
    assert run.folder.view().usage.repeated_queries == 2
    assert normalise("  With, Statement! ") == "with statement"


def test_rounds_stop_when_no_new_query_remains(tmp_path: Path) -> None:
    script = {"queries": [json.dumps({"queries": ["with statement"]})],
              "follow-up": [json.dumps({"queries": ["with statement"]})]}
    run = new_run(tmp_path, FakeRuntime(script=script), mode=ResearchMode.DEEP, depth=4)
    run.pipeline().run()
    assert "search-2" not in run.folder.view().stages_done
    assert "queries-2" in run.folder.view().stages_done


def test_broken_json_is_retried_then_falls_back(tmp_path: Path) -> None:
    script = {"brief": ["{", "not json at all", json.dumps(
        {"restated": "   ", "sub_questions": ["with statement"], "plan": "p"})],
        "notes": ['{"summary": ""}']}
    run = new_run(tmp_path, FakeRuntime(script=script))
    report = run.pipeline().run()
    brief_calls = [c for c in run.runtime.calls if c.purpose == "brief"]
    assert len(brief_calls) == MAX_ATTEMPTS
    assert [c.params.temperature for c in brief_calls] == [0.0, 0.7, 0.7]
    assert len({c.params.seed for c in brief_calls}) == MAX_ATTEMPTS
    retries = run.events(E.RETRY)
    assert len(retries) == MAX_ATTEMPTS  # two for the brief, one for the empty summary
    fallbacks = run.events(E.FALLBACK)
    assert [e.data["purpose"] for e in fallbacks] == ["brief"]
    brief = run.folder.load_stage("brief", st.Brief)
    assert brief is not None and brief.sub_questions == [
        "How does the with statement close files?"]
    usage = run.folder.view().usage
    assert usage.retries == 3 and usage.fallbacks == 1
    assert run.folder.view().status is ResearchStatus.COMPLETED
    assert_verbatim(report, run.corpus)


def test_max_model_calls_stops_the_run_at_that_many_calls(tmp_path: Path) -> None:
    run = new_run(tmp_path, mode=ResearchMode.DEEP, depth=3, max_model_calls=3)
    report = run.pipeline().run()
    assert len(run.runtime.calls) == 3 and report.usage.model_calls == 3
    assert report.stop_reason is StopReason.MODEL_CALLS
    assert run.folder.view().stop_reason is StopReason.MODEL_CALLS
    assert [e.data["reason"] for e in run.events(E.BUDGET)] == ["model_calls"]
    assert "queries-2" not in run.folder.view().stages_done  # gathering stopped
    assert "outline" in run.folder.view().stages_done  # the report still came
    assert assert_verbatim(report, run.corpus) >= 1


def test_token_budget_is_never_exceeded(tmp_path: Path) -> None:
    run = new_run(tmp_path, budget_tokens=1500)
    report = run.pipeline().run()
    assert report.stop_reason is StopReason.TOKENS
    assert 0 < report.usage.tokens <= 1500
    assert assert_verbatim(report, run.corpus) >= 1


def test_no_model_calls_still_gives_a_cited_report(tmp_path: Path) -> None:
    run = new_run(tmp_path, mode=ResearchMode.STANDARD, max_model_calls=0)
    report = run.pipeline().run()
    assert run.runtime.calls == [] and report.usage.model_calls == 0
    assert report.stop_reason is StopReason.MODEL_CALLS
    assert report.usage.fallbacks == len(run.events(E.FALLBACK)) > 0
    assert assert_verbatim(report, run.corpus) >= 1
    for section in report.sections:  # fallback claims are the notes' first quotes
        for claim in section.claims:
            assert claim.text == claim.citations[0].quote or claim.text in claim.citations[
                0].quote


def test_max_sources_caps_the_run(tmp_path: Path) -> None:
    run = new_run(tmp_path, mode=ResearchMode.DEEP, depth=3, breadth=4, max_sources=2,
                  question="with statement, threads, comprehensions and goroutines")
    report = run.pipeline().run()
    fetched = run.folder.load_stage("fetch-1", st.FetchRound)
    assert fetched is not None and len(fetched.sources) == 2
    assert len(report.sources) <= 2 and report.stop_reason is StopReason.SOURCES
    assert len(run.events(E.BUDGET)) == 1
    assert "queries-2" not in run.folder.view().stages_done


def test_time_budget_counts_across_restarts(tmp_path: Path) -> None:
    now = [1000.0]

    def clock() -> float:
        now[0] += 7.0  # every look at the clock is 7 s later
        return now[0]

    run = new_run(tmp_path, FakeRuntime(fail_at=2), budget_minutes=1)
    with pytest.raises(RuntimeError, match="injected"):
        run.pipeline(clock=clock).run()
    spent = run.folder.view().usage.elapsed_s
    assert spent > 0
    run.runtime.fail_at = None
    report = run.pipeline(clock=clock).run()
    assert report.usage.elapsed_s > spent and report.stop_reason is StopReason.TIME
    assert assert_verbatim(report, run.corpus) >= 1


def test_a_failed_run_resumes_without_redoing_finished_stages(tmp_path: Path) -> None:
    runtime = FakeRuntime(fail_at=9)
    run = new_run(tmp_path, runtime, mode=ResearchMode.DEEP, depth=2, breadth=2)
    with pytest.raises(RuntimeError, match="call 9"):
        run.pipeline().run()
    done_before = list(run.folder.view().stages_done)
    calls_before = len(runtime.calls)
    assert "notes-1" in done_before and "report" not in done_before
    runtime.fail_at = None
    report = run.pipeline().run()
    second = runtime.purposes()[calls_before:]
    assert "brief" not in second and "queries" not in second and "notes" not in second
    starts = stage_keys(run)
    finished = [str(e.data["key"]) for e in run.events(E.STAGE_DONE)]
    assert len(finished) == len(set(finished))  # no stage finished twice
    assert all(starts.count(key) == 1 for key in done_before)
    assert len(starts) == len(finished) + 1  # the failed one started twice
    assert run.folder.view().stages_done == finished
    # The injected failure raised before answering: that call is not counted.
    assert run.folder.view().usage.model_calls == len(runtime.calls) - 1
    assert assert_verbatim(report, run.corpus) >= 1


def test_cancel_flag_stops_the_run(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    run.folder.request_cancel()
    with pytest.raises(Cancelled):
        run.pipeline().run()
    assert run.runtime.calls == []
    run.folder.clear_cancel()
    run.runtime.on_call = lambda n: run.folder.request_cancel() if n == 3 else None
    with pytest.raises(Cancelled):
        run.pipeline().run()
    assert len(run.runtime.calls) == 3


def test_user_roles_recast_a_part_and_unknown_ones_fail_in_one_line(tmp_path: Path) -> None:
    roles = RoleRegistry(DictStore())
    roles.define(RoleDefinition(name="Skeptic", identity="You doubt every finding."))
    run = new_run(tmp_path, registry=roles, roles={RoleSlot.ANALYST: "skeptic"})
    run.pipeline().run()
    notes_roles = {e.data["role"] for e in run.events(E.MODEL_CALL)
                   if e.data["purpose"] in ("notes", "compress")}
    assert notes_roles == {"Skeptic"}
    assert any("You are the Skeptic" in c.prompt for c in run.runtime.calls)
    bad = new_run(tmp_path, run_id="run-2", roles={RoleSlot.PLANNER: "Pirate"})
    with pytest.raises(BadResearchRequest) as info:
        bad.pipeline().run()
    message = str(info.value)
    assert "\n" not in message and "Pirate" in message and "Deep Investigator" in message


def test_web_pages_are_fetched_stored_and_cited(tmp_path: Path) -> None:
    script = {"queries": [json.dumps({"queries": ["GIL"]})]}
    run = new_run(tmp_path, FakeRuntime(script=script), sources=SourceScope.WEB,
                  question="What is the GIL?", corpus=FakeCorpus({}), depth=1)
    run.pipeline(web=FakeWeb()).run()
    fetched = run.folder.load_stage("fetch-1", st.FetchRound)
    assert fetched is not None
    assert {s.ref for s in fetched.sources} == {"https://example.org/gil"}
    assert set(fetched.failed) == {"https://blocked.example/gil", "https://down.example/gil"}
    failures = [e.message for e in run.events(E.SOURCE) if e.data.get("ok") is False]
    assert any("allow-list" in m for m in failures) and any("proxy" in m for m in failures)
    report = run.folder.report()
    assert report is not None and assert_verbatim(report, run.corpus) >= 1
    assert all(s.kind is SourceKind.WEB for s in report.sources)


def test_a_small_context_window_cuts_context_instead_of_overflowing(tmp_path: Path) -> None:
    runtime = FakeRuntime(n_ctx=420)
    big = {f"docs/{i}.md": (f"Doc {i}", "The with statement closes files. " * 60)
           for i in range(6)}
    run = new_run(tmp_path, runtime, mode=ResearchMode.DEEP, depth=3, breadth=4,
                  corpus=FakeCorpus(big))
    report = run.pipeline().run()
    assert run.folder.view().status is ResearchStatus.COMPLETED
    assert assert_verbatim(report, run.corpus) >= 1


@pytest.mark.parametrize("mode", [ResearchMode.STANDARD, ResearchMode.FACT_CHECK])
def test_nothing_found_still_completes(tmp_path: Path, mode: ResearchMode) -> None:
    run = new_run(tmp_path, corpus=FakeCorpus({}), mode=mode)
    report = run.pipeline().run()
    assert report.sections == [] and report.sources == []
    assert report.summary.startswith("No passage")
    assert "verdict" not in run.runtime.purposes() and "claims" not in run.runtime.purposes()
    if mode is ResearchMode.FACT_CHECK:
        assert report.verdict == "insufficient evidence"


def test_memory_recall_reuses_an_earlier_run(tmp_path: Path) -> None:
    manager = MemoryManager(tmp_path / "memory")
    assert ResearchMemory(manager).recall("anything") == []  # not attached yet: no memory
    manager.attach(FakeEmbedder())
    try:
        memory = ResearchMemory(manager)
        first = new_run(tmp_path, run_id="first-run")
        first.pipeline(memory=memory).run()
        assert any("stored" in e.message for e in first.events(E.MEMORY))
        second = new_run(tmp_path, run_id="second-run",
                         question="Why are files closed by the with statement?")
        report = second.pipeline(memory=memory).run()
        assert report.reused_runs == ["first-run"]
        assert any("first-run" in e.message for e in second.events(E.MEMORY))
        brief_prompt = second.runtime.calls[0].prompt
        assert "(source: The with statement, docs/with.md)" in brief_prompt
        unrelated = new_run(tmp_path, run_id="third-run", question="zebra migration routes")
        assert unrelated.pipeline(memory=memory).run().reused_runs == []
    finally:
        manager.close()


# -- the real model ----------------------------------------------------------------------

REAL_DOCS = {
    "notes/with.md": DOCS["docs/with.md"],
    "notes/comprehensions.md": DOCS["docs/comprehensions.md"],
    "notes/gil.md": DOCS["docs/gil.md"],
    "notes/go.md": DOCS["docs/go.md"],
}


@pytest.fixture(scope="session")
def research_runtime(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    """SmolLM2 with a 2048 window: research prompts outgrow the shared 512 one."""
    rt = ModelRuntime(model_config(context_length=2048),
                      Path(tmp_path_factory.mktemp("research-runtime")))
    rt.load()
    return rt


# Per run: the calls a standard run needs from one source; a part the budget does not
# reach falls back, and its FALLBACK event names its role all the same.
REAL_CALLS = 6


@pytest.mark.parametrize(("mode", "question", "max_sources"), [
    (ResearchMode.QUICK, "How does the with statement close files?", 1),
    (ResearchMode.STANDARD, "Why do threads not speed up CPU bound Python code?", 1),
    # Four sources never reach the cap (the corpus has four): round 2 is not stopped.
    (ResearchMode.DEEP, "How do list comprehensions compare to for loops?", 4),
    (ResearchMode.FACT_CHECK, "The GIL lets only one thread run Python bytecode at a time.", 1),
    (ResearchMode.COMPARE, "Python threads vs Go goroutines", 2),
])
def test_real_model_runs_each_mode(tmp_path: Path, research_runtime: ModelRuntime,
                                   mode: ResearchMode, question: str, max_sources: int) -> None:
    corpus = FakeCorpus(REAL_DOCS)
    folder = RunFolder(tmp_path / "real-run")
    depth = 2 if mode is ResearchMode.DEEP else 1
    folder.create(ResearchRequest(run_id="real-run", question=question, mode=mode,
                                  depth=depth, breadth=2, max_sources=max_sources,
                                  max_model_calls=REAL_CALLS), time.time())
    model = ResearchModel(research_runtime, RoleRegistry(DictStore()))
    report = Pipeline(folder, model, corpus, None, None).run()
    assert ResearchReport.model_validate_json(report.model_dump_json()) == report
    assert folder.view().status is ResearchStatus.COMPLETED
    assert assert_verbatim(report, corpus) >= 1
    events = folder.events()
    called = {str(e.data["role"]) for e in events if e.kind is E.MODEL_CALL}
    cast_parts = {str(e.data["role"]) for e in events if e.kind in (E.MODEL_CALL, E.FALLBACK)}
    assert {"Researcher", "Analyst"} <= called and report.usage.model_calls <= REAL_CALLS
    assert cast_parts == set(MODES[mode].roles.values())
    if mode is ResearchMode.FACT_CHECK:
        assert report.verdict is not None
    if mode is ResearchMode.COMPARE:
        assert report.subjects == ["Python threads", "Go goroutines"]
