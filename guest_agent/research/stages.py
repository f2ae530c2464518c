"""What each pipeline stage persists (``stages/<key>.json``), and the model answers' shapes.

Stage values are plain data, so a resumed run reads its finished stages back and goes
on as if it had never stopped. Answer schemas (``*Answer``) are what a model call must
return; their constraints (lengths, item counts, enums of source numbers) become the
grammar it decodes under and are validated again after parsing.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, create_model

from guest_agent.protocol.research import (
    Quote,
    Source,
    SourceKind,
    SourceNote,
    Verdict,
)

# -- stage values ---------------------------------------------------------------------


class Brief(BaseModel):
    """Stage "brief": the question restated, its parts, a plan, and earlier runs reused."""

    restated: str
    sub_questions: list[str]
    plan: str
    subjects: list[str] = Field(default_factory=list)  # compare
    reused_runs: list[str] = Field(default_factory=list)
    recalled: list[str] = Field(default_factory=list)  # earlier runs' findings, as context


class QueryRound(BaseModel):
    """Stage "queries-r": the round's new queries (none: the rounds stop here)."""

    round: int
    queries: list[str]
    repeated: list[str] = Field(default_factory=list)


class Hit(BaseModel):
    """One source a query found; ``doc_id`` is empty for a web page not fetched yet."""

    query: str
    ref: str
    title: str
    kind: SourceKind
    doc_id: str = ""


class SearchHits(BaseModel):
    """Stage "search-r"."""

    round: int
    hits: list[Hit]


class Found(BaseModel):
    """A source (by number) to read for a query."""

    query: str
    n: int


class FetchRound(BaseModel):
    """Stage "fetch-r": every source known so far (numbered, first seen = 1) and this
    round's (query, source) pairs to read."""

    round: int
    sources: list[Source]
    found: list[Found]
    failed: list[str] = Field(default_factory=list)  # refs that could not be fetched


class Extract(BaseModel):
    query: str
    n: int
    quotes: list[Quote]


class ExtractRound(BaseModel):
    """Stage "extract-r": verbatim passages per (query, source)."""

    round: int
    items: list[Extract]


class NoteSet(BaseModel):
    """Stage "notes-r"."""

    round: int
    notes: list[SourceNote]


class Learning(BaseModel):
    text: str
    source: int


class Learnings(BaseModel):
    """Stage "compress-r": the round's findings, short, each naming its source."""

    round: int
    learnings: list[Learning]


class OutlineSection(BaseModel):
    heading: str
    sources: list[int]


class Outline(BaseModel):
    """Stage "outline"."""

    title: str
    sections: list[OutlineSection]


# -- model answers --------------------------------------------------------------------
# Static shapes (what the pipeline reads, typed) and per-call variants of them whose
# item counts and source numbers are the call's own (``create_model`` with the shape as
# base: the variant is still an instance of the shape).

# Strings are stripped, then bounded: an empty or whitespace-only answer is refused.
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=120)]
Heading = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=80)]
Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=150)]
# Two sentences at most: a small model that may go on goes on, and pays for every token.
Paragraph = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                             max_length=200)]
MAX_QUERIES = 8  # ResearchRequest.breadth's upper bound
MAX_LEARNINGS, MAX_CLAIMS, MAX_SECTIONS, MAX_SECTION_SOURCES = 6, 4, 5, 4


class BriefAnswer(BaseModel):
    restated: Paragraph
    sub_questions: list[Short] = Field(min_length=1, max_length=MAX_QUERIES)
    plan: Paragraph


class QueriesAnswer(BaseModel):
    queries: list[Short] = Field(min_length=1, max_length=MAX_QUERIES)


class SummaryAnswer(BaseModel):
    summary: Paragraph


class SourcedText(BaseModel):
    text: Line
    source: int


class LearningsAnswer(BaseModel):
    learnings: list[SourcedText] = Field(min_length=1, max_length=MAX_LEARNINGS)


class ClaimsAnswer(BaseModel):
    claims: list[SourcedText] = Field(min_length=1, max_length=MAX_CLAIMS)


class SectionAnswer(BaseModel):
    heading: Heading
    sources: list[int] = Field(min_length=1, max_length=MAX_SECTION_SOURCES)


class OutlineAnswer(BaseModel):
    title: Short
    sections: list[SectionAnswer] = Field(min_length=1, max_length=MAX_SECTIONS)


class VerdictAnswer(BaseModel):
    """The verdict, its explanation, and the source it rests on most (so the explanation
    is a claim with a citation like any other)."""

    verdict: Verdict
    explanation: Paragraph
    source: int


def _one_of(numbers: tuple[int, ...]) -> Any:
    """An integer that must be one of ``numbers`` (an enum in the grammar too)."""
    return Literal[numbers]


def _list_of(item: Any, most: int) -> Any:
    """A field of 1 to ``most`` items (``create_model``'s field tuple)."""
    kind: Any = list[item]
    return (kind, Field(min_length=1, max_length=most))


@functools.cache
def brief_answer(breadth: int) -> type[BriefAnswer]:
    return create_model("BriefAnswer", __base__=BriefAnswer,
                        sub_questions=_list_of(Short, breadth))


@functools.cache
def queries_answer(breadth: int) -> type[QueriesAnswer]:
    return create_model("QueriesAnswer", __base__=QueriesAnswer,
                        queries=_list_of(Short, breadth))


@functools.cache
def _sourced(numbers: tuple[int, ...], max_chars: int) -> type[SourcedText]:
    text: Any = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                 max_length=max_chars)]
    return create_model("SourcedText", __base__=SourcedText, text=(text, ...),
                        source=(_one_of(numbers), ...))


@functools.cache
def learnings_answer(numbers: tuple[int, ...]) -> type[LearningsAnswer]:
    # Six learnings of 100 characters fit the compress call's max_tokens.
    return create_model("LearningsAnswer", __base__=LearningsAnswer,
                        learnings=_list_of(_sourced(numbers, 100), MAX_LEARNINGS))


@functools.cache
def claims_answer(numbers: tuple[int, ...]) -> type[ClaimsAnswer]:
    return create_model("ClaimsAnswer", __base__=ClaimsAnswer,
                        claims=_list_of(_sourced(numbers, 150), MAX_CLAIMS))


@functools.cache
def outline_answer(numbers: tuple[int, ...]) -> type[OutlineAnswer]:
    section = create_model("SectionAnswer", __base__=SectionAnswer,
                           sources=_list_of(_one_of(numbers), MAX_SECTION_SOURCES))
    return create_model("OutlineAnswer", __base__=OutlineAnswer,
                        sections=_list_of(section, MAX_SECTIONS))


@functools.cache
def verdict_answer(numbers: tuple[int, ...]) -> type[VerdictAnswer]:
    return create_model("VerdictAnswer", __base__=VerdictAnswer,
                        source=(_one_of(numbers), ...))
