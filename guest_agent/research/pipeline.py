"""One research run, stage by stage, resumable.

    brief → per round r = 1..depth: queries-r → search-r → fetch-r → extract-r → notes-r
    → compress-r → outline → report

Every stage's value is saved in the run's folder when the stage ends, and a stage whose
file exists is read back instead of done again, so a run stopped anywhere (the VM saved,
the agent restarted) goes on from the stage it had reached, with the same numbers.

What the model may decide is narrow: queries, short summaries, learnings and claims,
each a grammar-constrained JSON answer naming sources by number from an enum of the
numbers that exist. Quotes are never the model's: the pipeline copies them from the
source's text by offsets (``extract``) and attaches them to claims itself. Every model
call has a deterministic fallback, so a broken answer, a spent budget or a model that
cannot follow the format still ends in a complete, cited report.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from pydantic import BaseModel

from guest_agent.protocol.research import (
    Citation,
    Claim,
    CorpusDocument,
    CorpusDocumentIn,
    DocumentFormat,
    FetchResult,
    Quote,
    ReportSection,
    ResearchEventKind,
    ResearchMode,
    ResearchReport,
    ResearchStage,
    ResearchStatus,
    RoleSlot,
    SearchResult,
    Source,
    SourceKind,
    SourceNote,
    SourceScope,
    StopReason,
    Verdict,
)
from guest_agent.research import stages as st
from guest_agent.research.extract import best_passages, best_quote, terms
from guest_agent.research.folder import Cancelled, RunFolder, stage_of
from guest_agent.research.llm import Budget, ResearchModel
from guest_agent.research.memory import ResearchMemory
from guest_agent.research.modes import MODES, cast, round_breadth, subjects

__all__ = ["Cancelled", "CorpusSearch", "Passage", "Pipeline", "WebSource", "WebUnavailable"]

T = TypeVar("T", bound=BaseModel)
E = ResearchEventKind
S = ResearchStatus

SEARCH_TOP_K = 3  # passages per query from the corpus, results per query from the web
# max_tokens per call: small answers keep a 135M model on track and prompts in n_ctx.
BRIEF_TOKENS, QUERY_TOKENS, NOTE_TOKENS, COMPRESS_TOKENS = 200, 160, 120, 200
OUTLINE_TOKENS, CLAIM_TOKENS, VERDICT_TOKENS = 200, 220, 160
MAX_SECTION_SOURCES = 4
SUMMARY_CLAIMS = 3
FALLBACK_PLAN = ("Search the sources for each sub-question, note what each source says, "
                 "and report the findings with their quotes.")
NOTHING_FOUND = "No passage relevant to the question was found in the sources searched."
FINDINGS = "Findings"
OTHER_FINDINGS = "Other findings"
COMPARISON = "Comparison"
EVIDENCE_FOR, EVIDENCE_AGAINST = "Evidence for", "Evidence against"
VERDICT_HEADING = "Verdict"
NO_VERDICT = "The evidence found does not settle the claim."
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


# -- what the pipeline reads sources through (implemented by the corpus and the broker) --


@dataclass(frozen=True)
class Passage:
    """One hit of a corpus search."""

    doc_id: str
    ref: str
    title: str
    kind: SourceKind
    text: str
    start: int
    end: int
    score: float


class CorpusSearch(Protocol):
    def search(self, query: str, top_k: int) -> list[Passage]: ...

    def text(self, doc_id: str) -> str:
        """The document's whole extracted text."""
        ...

    def add(self, doc: CorpusDocumentIn) -> CorpusDocument:
        """Web pages become documents (kind WEB)."""
        ...

    def find_ref(self, ref: str) -> CorpusDocument | None: ...


class WebSource(Protocol):
    def search(self, run_id: str, query: str, limit: int) -> list[SearchResult]:
        """May raise ``WebUnavailable``."""
        ...

    def fetch(self, run_id: str, url: str) -> FetchResult:
        """May raise ``WebUnavailable``."""
        ...


class WebUnavailable(RuntimeError):
    """The host's fetch proxy did not answer (the broker raises it)."""


# -- helpers ---------------------------------------------------------------------------


def normalise(query: str) -> str:
    """A query's identity for repeat detection: lowercase, no punctuation, single spaces."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", query.lower())).strip()


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip()


def document_format(content_type: str | None) -> DocumentFormat:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if "html" in kind:
        return DocumentFormat.HTML
    if "markdown" in kind:
        return DocumentFormat.MARKDOWN
    if kind == "application/pdf":
        return DocumentFormat.PDF
    return DocumentFormat.TEXT


def _overlap(a: str, b: str) -> int:
    return len(set(terms(a)) & set(terms(b)))


class Pipeline:
    """Runs (or resumes) the research run kept in ``folder``."""

    def __init__(self, folder: RunFolder, model: ResearchModel, corpus: CorpusSearch,
                 web: WebSource | None, memory: ResearchMemory | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.request = folder.request()
        self.plan = MODES[self.request.mode]
        self.clock = clock
        self.budget = Budget(self.request, folder, clock)
        self.model = model.for_run(folder, self.budget)
        self.corpus, self.web, self.memory = corpus, web, memory
        self.cast: dict[RoleSlot, str] = {}
        self.subjects: list[str] = []
        self._reset()

    def _reset(self) -> None:
        """What the finished stages add up to: rebuilt from them by every ``run``."""
        self.sources: list[Source] = []
        self.found: list[st.Found] = []
        self.notes: list[SourceNote] = []
        self.learnings: list[st.Learning] = []
        self.seen_queries: set[str] = set()
        self._web_missing_said = False

    @property
    def run_id(self) -> str:
        return self.request.run_id

    # -- the run ---------------------------------------------------------------------

    def run(self) -> ResearchReport:
        """Do every stage not done yet; returns the report (raises ``Cancelled``)."""
        request = self.request
        self._reset()
        # A misspelt role or a compare question without subjects fails here, in one line.
        self.cast = cast(request, self.model.roles)
        self.subjects = subjects(request) if request.mode is ResearchMode.COMPARE else []
        try:
            brief = self._stage("brief", st.Brief, S.PLANNING, 0, self._brief)
            self._rounds(brief)
            outline = self._outline(brief)
            report = self._stage("report", ResearchReport, S.SYNTHESIZING, None,
                                 lambda: self._report(brief, outline))
            self._finish(report)
        finally:
            self.budget.save()  # the time spent counts after a restart too
        return report

    def _check_cancel(self) -> None:
        if self.folder.cancel_requested():
            raise Cancelled(self.run_id)

    def _stage(self, key: str, model: type[T], status: ResearchStatus, round_: int | None,
               build: Callable[[], T]) -> T:
        """The stage's saved value, or build it, save it and announce both ends."""
        done = self.folder.load_stage(key, model)
        if done is not None:
            return done
        self._check_cancel()
        stage = stage_of(key)
        self.model.stage = stage
        fields: dict[str, object] = {"status": status, "stage": stage}
        if round_ is not None:
            fields["round"] = round_
        self.folder.update(**fields)
        self.folder.emit(E.STAGE, key, stage, key=key, round=round_)
        value = build()
        self.folder.save_stage(key, value)
        self.budget.save()
        self.folder.emit(E.STAGE_DONE, key, stage, key=key, round=round_)
        return value

    def _role(self, slot: RoleSlot) -> str:
        return self.cast.get(slot) or MODES[ResearchMode.STANDARD].roles[slot]

    # -- brief -------------------------------------------------------------------------

    def _brief(self) -> st.Brief:
        request = self.request
        question, mode = request.question, request.mode
        breadth = self.plan.breadth(request.breadth)
        recalled = (self.memory.recall(question, exclude_run=self.run_id)
                    if self.memory is not None else [])
        reused = list(dict.fromkeys(str(h.memory.metadata["research_run"]) for h in recalled))
        texts = [h.memory.content for h in recalled]
        if reused:
            self.folder.emit(E.MEMORY, f"reusing findings of earlier runs: {', '.join(reused)}",
                             ResearchStage.BRIEF, runs=",".join(reused), memories=len(texts))
        if mode is ResearchMode.FACT_CHECK:
            instruction = (f"Claim to check: {question}\nRestate the claim in one sentence, "
                           f"list at most {breadth} questions whose answers would confirm or "
                           "refute it, and write a one-sentence plan.")
        elif mode is ResearchMode.COMPARE:
            instruction = (f"Compare: {'; '.join(self.subjects)}.\nQuestion: {question}\n"
                           f"Restate the question in one sentence, list at most {breadth} "
                           "sub-questions to search for, and write a one-sentence plan.")
        else:
            instruction = (f"Question: {question}\nRestate the question in one sentence, list "
                           f"at most {breadth} sub-questions to search for, and write a "
                           "one-sentence plan.")
        default_subs = self.subjects or [clip(question, 120)]

        def fallback() -> st.BriefAnswer:
            return st.BriefAnswer.model_construct(restated=clip(question, 200),
                                                  sub_questions=default_subs,
                                                  plan=FALLBACK_PLAN)

        answer = self.model.ask(self._role(RoleSlot.PLANNER), "brief", instruction, texts,
                                st.brief_answer(breadth), fallback, BRIEF_TOKENS)
        subs = list(dict.fromkeys(answer.sub_questions))[:max(breadth, len(self.subjects))]
        return st.Brief(restated=answer.restated, sub_questions=subs or default_subs,
                        plan=answer.plan, subjects=self.subjects, reused_runs=reused,
                        recalled=texts)

    # -- rounds ------------------------------------------------------------------------

    def _rounds(self, brief: st.Brief) -> None:
        depth = self.plan.depth(self.request.depth)
        for round_ in range(1, depth + 1):
            if round_ > 1:
                if (reason := self.budget.check_time()) is not None:
                    self.budget.reach(reason)
                if self.budget.stop_reason is not None:
                    break  # a budget stops gathering; the report is still written
            queries = self._stage(f"queries-{round_}", st.QueryRound, S.ACTIVE, round_,
                                  partial(self._queries, brief, round_))
            self.seen_queries.update(normalise(q) for q in queries.queries)
            if not queries.queries:
                break  # nothing new left to ask
            hits = self._stage(f"search-{round_}", st.SearchHits, S.ACTIVE, round_,
                               partial(self._search, queries))
            fetched = self._stage(f"fetch-{round_}", st.FetchRound, S.ACTIVE, round_,
                                  partial(self._fetch, hits))
            self.sources = list(fetched.sources)
            self.found.extend(fetched.found)
            extracted = self._stage(f"extract-{round_}", st.ExtractRound, S.ACTIVE, round_,
                                    partial(self._extract, fetched))
            notes = self._stage(f"notes-{round_}", st.NoteSet, S.ACTIVE, round_,
                                partial(self._notes, extracted))
            self.notes.extend(notes.notes)
            learned = self._stage(f"compress-{round_}", st.Learnings, S.ANALYZING, round_,
                                  partial(self._compress, notes))
            self.learnings.extend(learned.learnings)

    def _queries(self, brief: st.Brief, round_: int) -> st.QueryRound:
        question = self.request.question
        breadth = round_breadth(self.plan.breadth(self.request.breadth), round_)
        if round_ == 1:
            role, purpose = self._role(RoleSlot.PLANNER), "queries"
            instruction = (f"Write at most {breadth} short search queries (a few keywords "
                           f"each) to answer: {question}")
            context = [f"Sub-questions: {'; '.join(brief.sub_questions)}",
                       f"Plan: {brief.plan}", *brief.recalled]
        else:
            role, purpose = self._role(RoleSlot.INVESTIGATOR), "follow-up queries"
            instruction = (f"The findings so far are above. Write at most {breadth} short "
                           f"search queries for what they still leave open about: {question}")
            context = [self._learning_lines(), "Already searched: " + "; ".join(
                sorted(self.seen_queries)), *brief.recalled]
        defaults = [*brief.sub_questions, clip(question, 120)]

        def fallback() -> st.QueriesAnswer:
            return st.QueriesAnswer.model_construct(queries=defaults)

        answer = self.model.ask(role, purpose, instruction, context,
                                st.queries_answer(breadth), fallback, QUERY_TOKENS)
        fresh: list[str] = []
        repeated: list[str] = []
        this_round: set[str] = set()
        for query in answer.queries:
            key = normalise(query)
            if not key:
                continue
            if key in self.seen_queries or key in this_round:
                repeated.append(query)
                self.budget.usage.repeated_queries += 1
                self.folder.emit(E.REPEATED_QUERY, query, ResearchStage.QUERIES, round=round_)
                continue
            if len(fresh) >= breadth:
                continue
            this_round.add(key)
            fresh.append(query.strip())
            self.folder.emit(E.QUERY, query, ResearchStage.QUERIES, round=round_)
        self.budget.usage.queries += len(fresh)
        return st.QueryRound(round=round_, queries=fresh, repeated=repeated)

    def _search(self, queries: st.QueryRound) -> st.SearchHits:
        scope = self.request.sources
        known = {s.ref for s in self.sources}
        fresh: set[str] = set()
        hits: list[st.Hit] = []
        taken: set[str] = set()

        def admit(hit: st.Hit) -> None:
            if hit.ref in taken:
                return  # one query per source per round
            if hit.ref not in known and hit.ref not in fresh:
                if len(known) + len(fresh) >= self.request.max_sources:
                    self.budget.reach(StopReason.SOURCES, ResearchStage.SEARCH)
                    return
                fresh.add(hit.ref)
            taken.add(hit.ref)
            hits.append(hit)

        for query in queries.queries:
            self._check_cancel()
            if scope in (SourceScope.CORPUS, SourceScope.BOTH):
                for p in self.corpus.search(query, SEARCH_TOP_K):
                    admit(st.Hit(query=query, ref=p.ref, title=p.title, kind=p.kind,
                                 doc_id=p.doc_id))
            if scope in (SourceScope.WEB, SourceScope.BOTH):
                for result in self._web_search(query):
                    admit(st.Hit(query=query, ref=result.url, title=result.title or result.url,
                                 kind=SourceKind.WEB))
        return st.SearchHits(round=queries.round, hits=hits)

    def _web_search(self, query: str) -> list[SearchResult]:
        if self.web is None:
            if not self._web_missing_said:
                self._web_missing_said = True
                self.folder.emit(E.SOURCE, "web search is not available: no fetch proxy",
                                 ResearchStage.SEARCH, ok=False)
            return []
        try:
            return self.web.search(self.run_id, query, SEARCH_TOP_K)
        except WebUnavailable as exc:
            self.folder.emit(E.SOURCE, f"web search failed: {exc}", ResearchStage.SEARCH,
                             ok=False, query=query)
            return []

    def _fetch(self, hits: st.SearchHits) -> st.FetchRound:
        sources = list(self.sources)
        by_ref = {s.ref: s for s in sources}
        found: list[st.Found] = []
        failed: list[str] = []
        for hit in hits.hits:
            source = by_ref.get(hit.ref)
            if source is None:
                doc_id, title = hit.doc_id, hit.title
                if not doc_id:  # a web result: stored already, or fetched now
                    self._check_cancel()
                    doc = self.corpus.find_ref(hit.ref) or self._fetch_page(hit)
                    if doc is None:
                        failed.append(hit.ref)
                        continue
                    doc_id, title = doc.doc_id, doc.title or title
                if len(sources) >= self.request.max_sources:
                    self.budget.reach(StopReason.SOURCES, ResearchStage.FETCH)
                    continue
                source = Source(n=len(sources) + 1, kind=hit.kind, ref=hit.ref,
                                title=title or hit.ref, doc_id=doc_id)
                sources.append(source)
                by_ref[hit.ref] = source
            pair = st.Found(query=hit.query, n=source.n)
            if pair not in found:
                found.append(pair)
        return st.FetchRound(round=hits.round, sources=sources, found=found, failed=failed)

    def _fetch_page(self, hit: st.Hit) -> CorpusDocument | None:
        """Fetch a web result and add it to the corpus; None (and an event) on failure."""
        assert self.web is not None  # web hits only come from a web source
        stage = ResearchStage.FETCH
        try:
            result = self.web.fetch(self.run_id, hit.ref)
        except WebUnavailable as exc:
            self.folder.emit(E.SOURCE, f"fetch failed: {exc}", stage, ok=False, ref=hit.ref)
            return None
        if not result.ok or not result.body_b64:
            why = result.error or "empty page"
            self.folder.emit(E.SOURCE, f"fetch failed: {why}", stage, ok=False, ref=hit.ref)
            return None
        try:
            return self.corpus.add(CorpusDocumentIn(
                ref=hit.ref, title=(result.title or hit.title)[:500] or None,
                format=document_format(result.content_type), content_b64=result.body_b64,
                kind=SourceKind.WEB))
        except ValueError as exc:  # unreadable page, too large, bad encoding
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.folder.emit(E.SOURCE, f"page not stored: {message}"[:300], stage, ok=False,
                             ref=hit.ref)
            return None

    def _extract(self, fetched: st.FetchRound) -> st.ExtractRound:
        used = {(n.source.n, q.start, q.end) for n in self.notes for q in n.quotes}
        items: list[st.Extract] = []
        for pair in fetched.found:
            self._check_cancel()
            source = fetched.sources[pair.n - 1]
            try:
                text = self.corpus.text(source.doc_id)
            except KeyError:
                self.folder.emit(E.SOURCE, f"[{source.n}] is no longer in the corpus",
                                 ResearchStage.EXTRACT, ok=False, n=source.n, ref=source.ref)
                continue
            quotes = best_passages(text, pair.query)
            if not quotes or all((source.n, q.start, q.end) in used for q in quotes):
                continue  # nothing new from this source for this query
            used.update((source.n, q.start, q.end) for q in quotes)
            items.append(st.Extract(query=pair.query, n=source.n, quotes=quotes))
            self.budget.usage.sources_read += 1
            self.folder.emit(E.SOURCE, f"read [{source.n}] {source.title}",
                             ResearchStage.EXTRACT, ok=True, n=source.n, ref=source.ref,
                             quotes=len(quotes))
        return st.ExtractRound(round=fetched.round, items=items)

    def _notes(self, extracted: st.ExtractRound) -> st.NoteSet:
        notes: list[SourceNote] = []
        for item in extracted.items:
            source = self.sources[item.n - 1]
            first = clip(item.quotes[0].text, 300)

            def fallback(first: str = first) -> st.SummaryAnswer:
                return st.SummaryAnswer.model_construct(summary=first)

            answer = self.model.ask(
                self._role(RoleSlot.ANALYST), "notes",
                f"Summarise in one or two sentences what the passages from source [{item.n}] "
                f"say about: {item.query}. Use only the passages.",
                [f'[{item.n}] "{q.text}"' for q in item.quotes],
                st.SummaryAnswer, fallback, NOTE_TOKENS)
            notes.append(SourceNote(source=source, query=item.query, summary=answer.summary,
                                    quotes=item.quotes, round=extracted.round))
        return st.NoteSet(round=extracted.round, notes=notes)

    def _compress(self, notes: st.NoteSet) -> st.Learnings:
        if not notes.notes:
            return st.Learnings(round=notes.round, learnings=[])
        numbers = tuple(sorted({n.source.n for n in notes.notes}))

        def fallback() -> st.LearningsAnswer:
            return st.LearningsAnswer.model_construct(learnings=[
                st.SourcedText.model_construct(text=clip(n.summary, 200), source=n.source.n)
                for n in notes.notes])

        answer = self.model.ask(
            self._role(RoleSlot.ANALYST), "compress",
            f"From the notes above, list at most 6 short learnings that help answer: "
            f"{self.request.question}. Give each the number of its source.",
            [f"[{n.source.n}] {n.summary}" for n in notes.notes],
            st.learnings_answer(numbers), fallback, COMPRESS_TOKENS)
        learnings = [st.Learning(text=x.text, source=x.source) for x in answer.learnings
                     if x.text.strip()]
        return st.Learnings(round=notes.round, learnings=learnings)

    def _learning_lines(self, numbers: Iterable[int] | None = None) -> str:
        """The learnings (of ``numbers``' sources) as "[n] text" lines; a noted source
        without a learning contributes its notes' summaries."""
        wanted = set(numbers) if numbers is not None else {n.source.n for n in self.notes}
        lines = [f"[{x.source}] {x.text}" for x in self.learnings if x.source in wanted]
        covered = {x.source for x in self.learnings}
        lines += [f"[{n.source.n}] {n.summary}" for n in self.notes
                  if n.source.n in wanted and n.source.n not in covered]
        return "\n".join(dict.fromkeys(lines))

    # -- outline and report ------------------------------------------------------------

    def _noted(self) -> list[int]:
        return sorted({n.source.n for n in self.notes})

    def _outline(self, brief: st.Brief) -> st.Outline:
        if not self.plan.outline:
            # Quick mode: one section, no call (and no stage to save).
            return st.Outline(title=clip(brief.restated or self.request.question, 120),
                              sections=[st.OutlineSection(heading=FINDINGS,
                                                          sources=self._noted())])
        return self._stage("outline", st.Outline, S.SYNTHESIZING, None,
                           lambda: self._outline_call(brief))

    def _outline_call(self, brief: st.Brief) -> st.Outline:
        numbers = self._noted()
        fallback_outline = self._fallback_outline(brief)
        if not numbers:
            return fallback_outline
        mode, question = self.request.mode, self.request.question
        if mode is ResearchMode.COMPARE:
            shape = (f"one section per subject ({'; '.join(self.subjects)}) and a last "
                     f"section '{COMPARISON}'")
        elif mode is ResearchMode.FACT_CHECK:
            shape = f"two sections, '{EVIDENCE_FOR}' the claim and '{EVIDENCE_AGAINST}' it"
        else:
            shape = "2 to 4 sections"
        sources = "\n".join(f"[{s.n}] {s.title}" for s in self.sources if s.n in numbers)

        def fallback() -> st.OutlineAnswer:
            return st.OutlineAnswer.model_construct(title=fallback_outline.title, sections=[
                st.SectionAnswer.model_construct(heading=s.heading, sources=s.sources)
                for s in fallback_outline.sections])

        answer = self.model.ask(
            self._role(RoleSlot.SYNTHESIZER), "outline",
            f"Plan a short report on: {question}\nGive it a title and {shape}; each section "
            "has a heading and the numbers of the sources it uses.",
            [self._learning_lines(), f"Sources:\n{sources}"],
            st.outline_answer(tuple(numbers)), fallback, OUTLINE_TOKENS)
        sections = [st.OutlineSection(heading=s.heading,
                                      sources=list(dict.fromkeys(s.sources)))
                    for s in answer.sections]
        return st.Outline(title=answer.title, sections=sections)

    def _fallback_outline(self, brief: st.Brief) -> st.Outline:
        """The outline without a model: by mode, from what each query found."""
        numbers = self._noted()
        title = clip(brief.restated or self.request.question, 120)
        mode = self.request.mode
        if mode is ResearchMode.FACT_CHECK:
            sections = [(EVIDENCE_FOR, numbers), (EVIDENCE_AGAINST, numbers)]
        elif mode is ResearchMode.COMPARE:
            about = {n: " ".join([s.title for s in self.sources if s.n == n] +
                                 [f"{x.query} {x.summary}" for x in self.notes
                                  if x.source.n == n]) for n in numbers}
            per_subject = [(subject, [n for n in numbers if _overlap(subject, about[n])])
                           for subject in self.subjects]
            both = [n for n in numbers
                    if sum(_overlap(s, about[n]) > 0 for s in self.subjects) >= 2]
            sections = [*per_subject, (COMPARISON, both or numbers)]
        else:
            subs = brief.sub_questions or [self.request.question]
            by_sub: dict[int, list[int]] = {i: [] for i in range(len(subs))}
            for pair in self.found:
                if pair.n not in numbers:
                    continue
                scores = [_overlap(pair.query, s) for s in subs]
                best = max(range(len(subs)), key=lambda i: (scores[i], -i))
                if scores[best] > 0 and pair.n not in by_sub[best]:
                    by_sub[best].append(pair.n)
            sections = [(subs[i], sorted(by_sub[i])) for i in by_sub]
            placed = {n for _, ns in sections for n in ns}
            rest = [n for n in numbers if n not in placed]
            if rest:
                sections.append((OTHER_FINDINGS if placed else FINDINGS, rest))
        return st.Outline(title=title, sections=[
            st.OutlineSection(heading=clip(h, 80), sources=ns) for h, ns in sections if ns])

    def _report(self, brief: st.Brief, outline: st.Outline) -> ResearchReport:
        noted = set(self._noted())
        quotes: dict[int, list[Quote]] = {}
        for note in self.notes:
            quotes.setdefault(note.source.n, []).extend(note.quotes)
        sections: list[ReportSection] = []
        said: set[tuple[str, int]] = set()
        verdict: Verdict | None = None
        if self.request.mode is ResearchMode.FACT_CHECK:
            verdict, claim = self._verdict(sorted(noted), quotes)
            if claim is not None:
                sections.append(ReportSection(heading=VERDICT_HEADING, claims=[claim]))
        for section in outline.sections:
            numbers = [n for n in section.sources if n in noted][:MAX_SECTION_SOURCES]
            if not numbers:
                continue
            claims = []
            for claim in self._claims(section.heading, numbers, quotes):
                key = (normalise(claim.text), claim.citations[0].n)
                if key not in said:
                    said.add(key)
                    claims.append(claim)
            if claims:
                sections.append(ReportSection(heading=section.heading, claims=claims))
        cited = {c.n for s in sections for claim in s.claims for c in claim.citations}
        firsts = [s.claims[0].text for s in sections if s.claims][:SUMMARY_CLAIMS]
        return ResearchReport(
            run_id=self.run_id, question=self.request.question, mode=self.request.mode,
            title=outline.title, summary=" ".join(firsts) or NOTHING_FOUND, sections=sections,
            sources=[s for s in self.sources if s.n in cited], verdict=verdict,
            subjects=self.subjects, reused_runs=brief.reused_runs,
            stop_reason=self.budget.stop_reason or StopReason.DONE,
            usage=self.budget.usage.model_copy(), created_at=self.clock())

    def _claims(self, heading: str, numbers: list[int],
                quotes: dict[int, list[Quote]]) -> list[Claim]:
        """A section's claims; the pipeline, not the model, attaches each one's quote."""
        firsts = {}
        for note in self.notes:
            if note.source.n in numbers and note.source.n not in firsts:
                firsts[note.source.n] = note
        fell_back = False

        def fallback() -> st.ClaimsAnswer:
            nonlocal fell_back
            fell_back = True
            return st.ClaimsAnswer.model_construct(claims=[
                st.SourcedText.model_construct(text=firsts[n].summary, source=n)
                for n in numbers])

        if self.request.mode is ResearchMode.FACT_CHECK and heading in (EVIDENCE_FOR,
                                                                        EVIDENCE_AGAINST):
            side = "support" if heading == EVIDENCE_FOR else "contradict"
            task = f"Write 1 to 4 claims from the findings that {side} the claim: "
        else:
            task = f"Write 1 to 4 claims for the section '{heading}' of a report on: "
        answer = self.model.ask(
            self._role(RoleSlot.SYNTHESIZER), "claims",
            f"{task}{self.request.question}\nEach claim is one sentence based on the "
            "findings above, with the number of its source.",
            [self._learning_lines(numbers)], st.claims_answer(tuple(numbers)), fallback,
            CLAIM_TOKENS)
        claims = []
        for item in answer.claims:
            text = item.text.strip()
            if not text or item.source not in numbers:
                continue
            if fell_back:
                quote: Quote | None = firsts[item.source].quotes[0]
            else:
                quote = best_quote(quotes.get(item.source, []), f"{text} {heading}")
            if quote is not None:
                claims.append(Claim(text=text, citations=[Citation(n=item.source,
                                                                   quote=quote.text)]))
        return claims

    def _verdict(self, numbers: list[int],
                 quotes: dict[int, list[Quote]]) -> tuple[Verdict, Claim | None]:
        """The fact-checker's verdict and its explanation as a cited claim; without
        evidence the verdict is INSUFFICIENT, and no model is asked."""
        if not numbers:
            return Verdict.INSUFFICIENT, None
        fell_back = False

        def fallback() -> st.VerdictAnswer:
            nonlocal fell_back
            fell_back = True
            return st.VerdictAnswer.model_construct(verdict=Verdict.INSUFFICIENT,
                                                    explanation=NO_VERDICT, source=numbers[0])

        answer = self.model.ask(
            self._role(RoleSlot.FACT_CHECKER), "verdict",
            f"Claim: {self.request.question}\nWeigh the findings above for and against the "
            "claim. Say 'supported' or 'refuted' only if they settle it, else 'insufficient "
            "evidence'; explain in one sentence and give the number of the source the "
            "verdict rests on most.",
            [self._learning_lines(numbers)], st.verdict_answer(tuple(numbers)), fallback,
            VERDICT_TOKENS)
        if fell_back:
            return answer.verdict, None
        quote = best_quote(quotes.get(answer.source, []), answer.explanation)
        if quote is None:
            return answer.verdict, None
        return answer.verdict, Claim(text=answer.explanation,
                                     citations=[Citation(n=answer.source, quote=quote.text)])

    def _finish(self, report: ResearchReport) -> None:
        """Publish the report, remember the findings, mark the run completed."""
        self.folder.write_report(report)
        if self.memory is not None:
            stored = self.memory.store(report, self.notes)
            if stored:
                self.folder.emit(E.MEMORY, f"stored {stored} findings in memory",
                                 ResearchStage.REPORT, stored=stored)
        self.folder.update(status=S.COMPLETED, stage=ResearchStage.REPORT,
                           stop_reason=report.stop_reason)
        self.folder.emit(E.STATUS, "completed", ResearchStage.REPORT,
                         status=S.COMPLETED.value, stop_reason=report.stop_reason.value)
