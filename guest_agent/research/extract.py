"""Verbatim passages: which spans of a source's text answer a query.

Deterministic and model-free. A ``Quote`` is always ``text[start:end]`` exactly: spans are
trimmed and shortened by moving their offsets (to whitespace and word boundaries), never
by editing their text, so a report's quotes can be checked against the source.

Scoring is BM25 within the one document: each sentence (or paragraph, heading, list
item) is a "document", the query's stemmed content words are the terms.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from guest_agent.protocol.research import Quote

WORD = re.compile(r"[A-Za-z0-9]+")
TOKEN = re.compile(r"\S+")
# A span ends after sentence punctuation (and closing quotes/brackets) followed by
# whitespace, at a blank line, or at a line break before a heading or list item.
BOUNDARY = re.compile(
    r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+|\n[ \t]*\n\s*|\n(?=[ \t]*(?:[#>*-]|\d+[.)])\s)")
STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
    "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
    "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself",
    "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just",
    "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once",
    "only", "or", "other", "our", "ours", "out", "over", "own", "same", "she", "should", "so",
    "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there", "these",
    "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we",
    "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
    "would", "you", "your", "yours"
})
SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "ly", "s")
K1, B = 1.2, 0.75  # the usual BM25 constants


def stem(word: str) -> str:
    """A crude suffix-stripping stem: "statements" and "statement" meet, "ies" → "y"."""
    word = word.lower()
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
    return word


def terms(text: str) -> list[str]:
    """The stemmed content words of ``text``, in order (stopwords left out)."""
    return [stem(w) for w in WORD.findall(text.lower()) if w not in STOPWORDS]


def spans(text: str) -> list[tuple[int, int]]:
    """Sentence-like spans of ``text`` as (start, end), trimmed of surrounding whitespace;
    spans without a word are left out."""
    out: list[tuple[int, int]] = []
    start = 0
    for match in [*BOUNDARY.finditer(text), None]:
        end = len(text) if match is None else match.start()
        trimmed = _trim(text, start, end)
        if trimmed is not None and WORD.search(text, trimmed[0], trimmed[1]):
            out.append(trimmed)
        if match is not None:
            start = match.end()
    return out


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def fit_quote(text: str, start: int, end: int, max_chars: int = 400,
              query: str = "") -> Quote | None:
    """``text[start:end]`` as a quote of at most ``max_chars``: trimmed, and if too long cut
    to the word-bounded window holding most of ``query``'s terms. None if only whitespace."""
    trimmed = _trim(text, start, end)
    if trimmed is None:
        return None
    start, end = trimmed
    if end - start > max_chars:
        start, end = _window(text, start, end, max_chars, set(terms(query)))
    return Quote(text=text[start:end], start=start, end=end)


def _window(text: str, start: int, end: int, max_chars: int,
            wanted: set[str]) -> tuple[int, int]:
    """The whole-word window of at most ``max_chars`` in ``text[start:end]`` that holds the
    most wanted terms (the earliest such window)."""
    tokens = [(m.start(), m.end()) for m in TOKEN.finditer(text, start, end)]
    hits = [sum(stem(w) in wanted for w in WORD.findall(text[s:e].lower())) for s, e in tokens]
    best, best_hits = None, -1
    left, inside = 0, 0
    for right, (_, tok_end) in enumerate(tokens):
        inside += hits[right]
        while left <= right and tok_end - tokens[left][0] > max_chars:
            inside -= hits[left]
            left += 1
        if left <= right and inside > best_hits:
            best, best_hits = (tokens[left][0], tok_end), inside
    if best is None:  # one "word" longer than max_chars (a URL, a hash): cut it
        return start, start + max_chars
    return best


def best_passages(text: str, query: str, k: int = 2, max_chars: int = 400) -> list[Quote]:
    """The ``k`` spans of ``text`` that best match ``query``, in document order.

    When no span shares a word with the query (the search matched by meaning), the
    first ``k`` spans are returned: a source is never left without a quote."""
    found = spans(text)
    if not found or k <= 0:
        return []
    wanted = list(dict.fromkeys(terms(query)))
    scores = _bm25([terms(text[s:e]) for s, e in found], wanted)
    ranked = sorted((i for i, score in enumerate(scores) if score > 0),
                    key=lambda i: (-scores[i], i))[:k]
    chosen = sorted(ranked) if ranked else list(range(min(k, len(found))))
    quotes = [fit_quote(text, *found[i], max_chars=max_chars, query=query) for i in chosen]
    return [q for q in quotes if q is not None]


def _bm25(docs: Sequence[Sequence[str]], query: Sequence[str]) -> list[float]:
    """BM25 of each span against the query terms, idf taken over these spans."""
    if not docs or not query:
        return [0.0] * len(docs)
    counts = [Counter(d) for d in docs]
    avg = sum(len(d) for d in docs) / len(docs) or 1.0
    n = len(docs)
    idf = {}
    for term in query:
        df = sum(term in c for c in counts)
        idf[term] = math.log(1 + (n - df + 0.5) / (df + 0.5))
    scores = []
    for doc, c in zip(docs, counts, strict=True):
        norm = K1 * (1 - B + B * len(doc) / avg)
        scores.append(sum(idf[t] * c[t] * (K1 + 1) / (c[t] + norm) for t in query if c[t]))
    return scores


def best_quote(quotes: Sequence[Quote], about: str) -> Quote | None:
    """Of ``quotes``, the one sharing most terms with ``about`` (the first on a tie)."""
    if not quotes:
        return None
    wanted = set(terms(about))
    return max(quotes, key=lambda q: len(wanted & set(terms(q.text))))
