"""Chunking and ranking, without a model: spans cover the text, cuts fall on boundaries,
fusion and the per-memory cap and near-duplicate collapse do what the ranking promises."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guest_agent.memory import ranking
from guest_agent.memory.chunking import (
    MAX_WORDS,
    OVERLAP_WORDS,
    Span,
    indexed_text,
    section,
    split,
)
from guest_agent.memory.store import LocatedChunk
from guest_agent.protocol import MemoryImportance, MemoryType


def test_a_short_text_is_one_chunk() -> None:
    assert split("  a short memory\n") == [Span(0, 17)]


def test_a_chunk_is_indexed_under_its_document_and_section_headings() -> None:
    install = " ".join(f"install{w}." for w in range(150))
    usage = " ".join(f"usage{w}." for w in range(150))
    text = f"Guide\n\n## Install\n\n{install}\n\n4.2. Usage Notes\n\n{usage}"
    spans = split(text)
    first, last = indexed_text(text, spans[0]), indexed_text(text, spans[-1])
    assert first.startswith("Guide\n\n## Install") and first.count("Guide") == 1
    assert last.startswith("Guide\n\n4.2. Usage Notes\n\n") and last.endswith("usage149.")


def test_sentences_code_and_fragments_are_not_section_headings() -> None:
    body = " ".join(["word"] * 50)
    for line in ["It ends a sentence.", "x = f(1)", ">>> print(1)", "lower case start",
                 "A line that is far too long to be a section heading of any document at all"]:
        text = f"It starts with a sentence.\n\n{line}\n\n{body}"
        assert section(text, text.index(body)) == "", line
    text = f"It starts with a sentence.\n\nRationale\n\n{body}"
    assert section(text, text.index(body)) == "Rationale"


def test_a_long_text_is_cut_at_paragraphs_and_every_word_is_covered() -> None:
    paragraphs = [" ".join(f"p{p}w{w}" for w in range(70)) for p in range(6)]
    text = "\n\n".join(paragraphs)
    spans = split(text)
    assert len(spans) > 1
    for span in spans:
        chunk = text[span.start : span.end]
        assert len(chunk.split()) <= MAX_WORDS
        assert chunk == chunk.strip()
    # Cut at a paragraph end: each chunk but the last ends with a paragraph's last word.
    assert all(text[s.start : s.end].endswith("w69") for s in spans[:-1])
    covered = {w for s in spans for w in text[s.start : s.end].split()}
    assert covered == set(text.split())


@given(st.lists(st.sampled_from(["alpha", "beta.", "gamma\n", "delta\n\n", "e"]),
                min_size=0, max_size=900))
def test_spans_cover_every_word_in_order_with_bounded_overlap(tokens: list[str]) -> None:
    text = " ".join(tokens)
    spans = split(text, max_words=50, overlap=5)
    assert spans[0].start <= (len(text) - len(text.lstrip()))
    words = [w for s in spans for w in text[s.start : s.end].split()]
    assert len(words) >= len(text.split())
    assert all(len(text[s.start : s.end].split()) <= 50 for s in spans)
    assert all(a.start < b.start and b.start < a.end for a, b in itertools.pairwise(spans))
    assert text[spans[-1].start : spans[-1].end].split()[-1:] == text.split()[-1:]


def test_a_phrase_shorter_than_the_overlap_is_whole_in_some_chunk() -> None:
    text = " ".join(f"w{i}" for i in range(1000))
    spans = split(text)
    for first in range(0, 1000 - OVERLAP_WORDS, 37):
        phrase = " ".join(f"w{i}" for i in range(first, first + OVERLAP_WORDS))
        assert any(phrase in text[s.start : s.end] for s in spans), first


def test_overlap_must_be_smaller_than_a_chunk() -> None:
    with pytest.raises(ValueError):
        split("x", max_words=10, overlap=10)


def chunk(chunk_id: int, memory_seq: int, importance: MemoryImportance = MemoryImportance.MEDIUM,
          access_count: int = 0) -> LocatedChunk:
    return LocatedChunk(chunk_id, memory_seq, 0, 0, 1, f"m{memory_seq}", MemoryType.CORE_FACT,
                        importance, None, None, time.time(), access_count)


def test_fusion_rewards_agreement_and_breaks_ties_by_retention() -> None:
    now = time.time()
    a, b, c = chunk(1, 1), chunk(2, 2, MemoryImportance.CRITICAL, 10), chunk(3, 3)
    fused = ranking.fuse([(a, 0.9), (c, 0.8)], [(a, 5.0), (b, 4.0)], now)
    assert [r.chunk.chunk_id for r in fused] == [1, 2, 3]  # a in both; b wins c's tie
    assert (fused[0].similarity, fused[0].keyword_score) == (0.9, 5.0)
    assert fused[1].similarity is None and fused[2].keyword_score is None
    assert fused[1].score == fused[2].score and fused[1].retention > fused[2].retention


def test_at_most_so_many_chunks_of_one_memory() -> None:
    ranked = ranking.single([(chunk(i, 1 if i < 4 else i), 1.0 - i / 10) for i in range(6)],
                            vector=True, now=time.time())
    assert [r.chunk.chunk_id for r in ranking.per_memory(ranked, 2)] == [0, 1, 4, 5]


def test_near_duplicates_collapse_to_the_first() -> None:
    texts = ["The cat sat on the mat today.", "the cat sat on the mat today!",
             "A dog barked.", "The cat sat on the mat."]
    assert ranking.collapse_near_duplicates(texts, keep=3) == [0, 2, 3]


def test_retention_weighs_importance_recency_and_access() -> None:
    now = time.time()
    fresh = ranking.retention_score(chunk(1, 1, MemoryImportance.CRITICAL, 10), now)
    assert fresh == pytest.approx(1.0)
    low = ranking.retention_score(chunk(1, 1, MemoryImportance.LOW, 0), now + 15 * 86400)
    assert low == pytest.approx(0.4 * 0.25 + 0.3 * 0.5)
