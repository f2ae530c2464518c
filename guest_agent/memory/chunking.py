"""Split a memory into chunks an embedding model sees whole.

An embedding model reads a bounded window (all-MiniLM-L6-v2 was trained on 256 word
pieces), so a long memory or document is cut into chunks and each gets its own vector;
a hit then points at the chunk, by its character span in the memory's text.

Cuts fall at the largest boundary that keeps a chunk under the budget: blank lines
(paragraphs) first, then line ends and sentence ends, then spaces. Words are the budget's
unit because they need no model: English runs ~1.3 WordPiece tokens a word, so 160 words
stay near 256 tokens. Code runs many more tokens a word (down to ~2 characters a token), so
the caller may pass ``fits``, the model's own check, and a chunk it rejects is shortened
until it fits. Consecutive chunks share ``overlap`` words, so a passage cut in two is still
found whole in one of them.

What a chunk is embedded and indexed by (``indexed_text``) is its span after its
memory's heading and its section's: a passage deep in a long document still says what
it is part of.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_WORDS = 160
OVERLAP_WORDS = 20
HEADING_CHARS = 100  # a first line this short is a heading
HEADING_WORDS = 12

_WORD = re.compile(r"\S+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = ".!?:;"
_PARAGRAPH_TEXT = re.compile(r"(?:\A|\n[ \t]*\n)[ \t]*([^\n]+?)[ \t]*(?=\n[ \t]*\n|\Z)")
_CODE_CHARS = frozenset("=(){}[]<>")

@dataclass(frozen=True)
class Span:
    """Characters ``start:end`` of the memory's text."""

    start: int
    end: int


def split(text: str, max_words: int = MAX_WORDS, overlap: int = OVERLAP_WORDS,
          fits: Callable[[str], bool] | None = None) -> list[Span]:
    """The chunks of ``text``: one span for a short text, else spans of ≤ ``max_words``
    words that ``fits`` accepts (but for a single word it rejects)."""
    if not 0 <= overlap < max_words:
        raise ValueError("overlap must be smaller than max_words")
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if len(words) <= max_words and (fits is None or fits(text)):
        return [Span(0, len(text))]
    spans: list[Span] = []
    first = 0
    while first < len(words):
        last = min(first + max_words, len(words))  # exclusive
        while (fits is not None and last > first + 1
               and not fits(text[words[first][0] : words[last - 1][1]])):
            last = first + max(1, (last - first) * 3 // 4)
        if last < len(words):
            last = _best_cut(text, words, first, last)
        spans.append(Span(words[first][0], words[last - 1][1]))
        if last == len(words):
            break
        first = max(last - min(overlap, (last - first) // 2), first + 1)
    return spans


def _best_cut(text: str, words: list[tuple[int, int]], first: int, last: int) -> int:
    """Where to end a chunk of ``words[first:last]``: after the last word that is followed
    by the strongest boundary, looking only in the chunk's second half."""
    floor = first + (last - first) // 2
    return max(range(last, floor, -1), key=lambda end: _strength(text, words, end))


def _strength(text: str, words: list[tuple[int, int]], end: int) -> int:
    """3 a paragraph break, 2 a line or sentence end, 1 a space, before ``words[end]``."""
    gap = text[words[end - 1][1] : words[end][0]]
    if _PARAGRAPH.search(gap):
        return 3
    if "\n" in gap or text[words[end - 1][1] - 1] in _SENTENCE_END:
        return 2
    return 1


def heading(text: str) -> str:
    """The memory's first line when it is short enough to be a title, else ''."""
    first = text.lstrip().split("\n", 1)[0].strip()
    return first if len(first) <= HEADING_CHARS and first != text.strip() else ""


def section(text: str, start: int) -> str:
    """The last section heading that begins before character ``start``, else ''."""
    starts, lines = _headings(text)
    found = bisect.bisect_left(starts, start)
    return lines[found - 1] if found else ""


@functools.lru_cache(maxsize=8)
def _headings(text: str) -> tuple[list[int], list[str]]:
    """Where each section heading of ``text`` begins, and its line: found once per text,
    not once per chunk (a text's chunks are indexed one after another)."""
    found = [(m.start(1), m.group(1)) for m in _PARAGRAPH_TEXT.finditer(text)
             if _looks_like_heading(m.group(1))]
    return [pos for pos, _ in found], [line for _, line in found]


def _looks_like_heading(line: str) -> bool:
    # One short line that starts like a title, ends no sentence and holds no code: how a
    # section heading survives in plain text ("4.2. for Statements") and Markdown ("## Setup").
    return (len(line) <= HEADING_CHARS and len(line.split()) <= HEADING_WORDS
            and (line[0].isupper() or line[0].isdigit() or line[0] == "#")
            and line[-1] not in _SENTENCE_END + "," and not _CODE_CHARS.intersection(line))


def indexed_text(text: str, span: Span) -> str:
    """The chunk's text as embedded and keyword-indexed: the memory's heading and the
    section's, then the span (a heading the span starts with is not repeated)."""
    chunk = text[span.start : span.end]
    head = chunk.lstrip()
    title = heading(text)
    parts = [h for h in dict.fromkeys([title, section(text, span.start)])
             if h and not head.startswith(h)]
    return "\n\n".join([*parts, chunk])
