"""A retrieval-quality set from a real document collection: Debian's Python manual.

``bench/data/python_doc_questions.json`` lists the pages (the tutorial and 20 library
pages of ``python3.11-doc``) and 80 questions, each with the exact phrase that answers
it, which occurs once in the whole set. A retrieved chunk answers a question when its
text contains the phrase (whitespace collapsed), so the labels do not depend on where
chunks are cut.

A page's text is what its ``<div class="body" role="main">`` shows, with a paragraph
break after every block element (so the chunker sees the page's structure).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc/python3.11/html")
QUESTIONS = Path(__file__).resolve().parent / "data" / "python_doc_questions.json"
_BLOCKS = {"p", "li", "dt", "dd", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "div",
           "section", "table", "blockquote"}
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Question:
    text: str
    page: str
    answer: str


@dataclass(frozen=True)
class DocSet:
    corpus: str
    pages: dict[str, str]  # relative path -> text
    questions: list[Question]


def collapse(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


class _MainText(HTMLParser):
    """The text of the page's main body div, script and style left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # div nesting inside the main div; 0 outside it
        self.skip = 0  # inside script or style
        self.done = False
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        if tag in ("script", "style"):
            self.skip += bool(self.depth)
        elif tag == "div" and self.depth:
            self.depth += 1
        elif tag == "div":
            found = dict(attrs)
            if "body" in (found.get("class") or "").split() and found.get("role") == "main":
                self.depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self.done or not self.depth:
            return
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
            return
        if tag in _BLOCKS:
            self.parts.append("\n\n")
        if tag == "div":
            self.depth -= 1
            self.done = self.depth == 0

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skip:
            self.parts.append(data)


def page_text(path: Path) -> str:
    """A page's main text, paragraphs separated by blank lines."""
    parser = _MainText()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    paragraphs = (collapse(p) for p in "".join(parser.parts).split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


def load(questions: Path = QUESTIONS, root: Path = DOC_ROOT) -> DocSet:
    """The pages and questions; raises if the manual is missing or a phrase is not once."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is missing: install Debian's python3-doc")
    data = json.loads(questions.read_text())
    pages = {rel: page_text(root / rel) for rel in data["files"]}
    flat = {rel: collapse(text) for rel, text in pages.items()}
    found = [Question(q["q"], q["file"], q["answer"]) for q in data["questions"]]
    for q in found:
        where = [rel for rel, text in flat.items() if q.answer in text]
        if where != [q.page]:
            raise ValueError(f"answer of {q.text!r} is in {where}, expected [{q.page}]")
    return DocSet(data["corpus"], pages, found)
