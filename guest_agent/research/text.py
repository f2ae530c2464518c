"""Text out of documents: HTML, Markdown, plain text and PDF.

Stdlib only for HTML (``html.parser``), poppler's ``pdftotext`` for PDF. The text kept is
what a research run reads, searches and quotes, so it keeps the document's paragraph
structure (blank lines between blocks) and drops what a reader never sees (scripts,
styles, navigation, the head).
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from guest_agent.protocol.research import DocumentFormat

PDFTOTEXT_TIMEOUT_S = 60
# Elements whose content is never text a reader sees.
_SKIPPED = frozenset({"script", "style", "nav", "head", "noscript", "template", "svg",
                      "iframe", "object", "canvas"})
# Void elements have no end tag: never count them as open.
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                   "meta", "param", "source", "track", "wbr"})
# Elements that start and end a block (a paragraph break around them).
_BLOCKS = frozenset({"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr",
                     "table", "ul", "ol", "dl", "dt", "dd", "blockquote", "section",
                     "article", "header", "footer", "aside", "main", "figure", "figcaption",
                     "hr", "address", "details", "summary", "form", "fieldset"})
# Landmarks that are navigation whatever their tag (Sphinx's "related" bars, for one).
_SKIPPED_ROLES = frozenset({"navigation", "search", "banner"})
_BREAKS = frozenset({"br"})  # a line break, not a paragraph
_CELLS = frozenset({"td", "th"})
_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_SPACES_RE = re.compile(r"[ \t\f\v\r\u00a0]+")
_MANY_BREAKS_RE = re.compile(r"\n{3,}")

_CONTENT_TYPES = {
    "text/html": DocumentFormat.HTML,
    "application/xhtml+xml": DocumentFormat.HTML,
    "text/markdown": DocumentFormat.MARKDOWN,
    "text/x-markdown": DocumentFormat.MARKDOWN,
    "text/plain": DocumentFormat.TEXT,
    "application/pdf": DocumentFormat.PDF,
}
_SUFFIXES = {
    ".html": DocumentFormat.HTML,
    ".htm": DocumentFormat.HTML,
    ".xhtml": DocumentFormat.HTML,
    ".md": DocumentFormat.MARKDOWN,
    ".markdown": DocumentFormat.MARKDOWN,
    ".txt": DocumentFormat.TEXT,
    ".rst": DocumentFormat.TEXT,
    ".text": DocumentFormat.TEXT,
    "": DocumentFormat.TEXT,
    ".pdf": DocumentFormat.PDF,
}


class UnreadableDocument(ValueError):
    """A document whose text could not be had (one line: what, and the fix if any)."""


def format_for(name_or_url: str, content_type: str | None = None) -> DocumentFormat | None:
    """The format of a document by its content type, else its name's suffix (None: unknown).

    A URL with no suffix and no content type is taken as HTML (a web page); a file name
    with no suffix as plain text.
    """
    if content_type:
        mime = content_type.split(";")[0].strip().lower()
        if mime in _CONTENT_TYPES:
            return _CONTENT_TYPES[mime]
    is_url = "://" in name_or_url
    path = urlsplit(name_or_url).path if is_url else name_or_url
    suffix = PurePosixPath(path).suffix.lower()
    if is_url and suffix in ("", ".php", ".asp", ".aspx", ".jsp"):
        return DocumentFormat.HTML
    return _SUFFIXES.get(suffix)


def extract_text(raw: bytes, fmt: DocumentFormat, name: str = "the document"
                 ) -> tuple[str, str | None]:
    """(text, title) of a document; raises ``UnreadableDocument`` (``name`` names it)."""
    title: str | None = None
    if fmt is DocumentFormat.HTML:
        text, title = _html_text(raw)
    elif fmt is DocumentFormat.PDF:
        text = _pdf_text(raw, name)
    else:
        text = _normalize(raw.decode("utf-8", errors="replace").lstrip("\ufeff"))
        if fmt is DocumentFormat.MARKDOWN:
            title = _markdown_title(text)
    if not text.strip():
        raise UnreadableDocument(f"{name} has no text")
    return text, title


def _normalize(text: str) -> str:
    """Unix line ends, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_BREAKS_RE.sub("\n\n", text).strip("\n")


def _markdown_title(text: str) -> str | None:
    for line in text.split("\n"):
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


# -- HTML -----------------------------------------------------------------------------------


def _html_charset(raw: bytes) -> str:
    """The charset a page declares (a BOM, else its meta tag), else UTF-8."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    found = _CHARSET_RE.search(raw[:4096])
    if found:
        name = found.group(1).decode("ascii", errors="replace")
        try:
            "".encode(name)
            return name
        except LookupError:
            pass
    return "utf-8"


class _TextParser(HTMLParser):
    """Collects visible text as (kind, text) pieces: "text" flows, "pre" is kept as it is,
    "break" is a line ("\n") or paragraph ("\n\n") break a tag made. Entities are
    decoded by the parser itself (``convert_charrefs``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[tuple[str, str]] = []
        self.title: list[str] = []
        self.h1: list[str] | None = None  # the first h1's text
        self._h1_open = False
        # Open elements inside a skipped one (its own tag first): skipping ends when it closes.
        self._skipping: list[str] = []
        self._in_title = False
        self._pre = 0

    def _skips(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        return tag in _SKIPPED or dict(attrs).get("role") in _SKIPPED_ROLES

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
            return
        if self._skipping or self._skips(tag, attrs):
            if tag not in _VOID:
                self._skipping.append(tag)
            return
        if tag in _BLOCKS:
            self.pieces.append(("break", "\n\n"))
        elif tag in _BREAKS:
            self.pieces.append(("break", "\n"))
        elif tag in _CELLS:
            self.pieces.append(("text", " "))
        if tag == "pre":
            self._pre += 1
        if tag == "h1" and self.h1 is None:
            self.h1, self._h1_open = [], True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            return
        if tag in _BREAKS:
            self.pieces.append(("break", "\n"))
        elif tag in _BLOCKS:
            self.pieces.append(("break", "\n\n"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            return
        if self._skipping:
            if tag in self._skipping:  # close it, and whatever was left open inside it
                while self._skipping.pop() != tag:
                    pass
            return
        if tag in _BLOCKS:
            self.pieces.append(("break", "\n\n"))
        if tag == "pre" and self._pre:
            self._pre -= 1
        if tag == "h1":
            self._h1_open = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skipping:
            self.pieces.append(("pre" if self._pre else "text", data))
            if self._h1_open and self.h1 is not None:
                self.h1.append(data)


def _html_text(raw: bytes) -> tuple[str, str | None]:
    parser = _TextParser()
    parser.feed(raw.decode(_html_charset(raw), errors="replace"))
    parser.close()
    title = " ".join("".join(parser.title).split()) or None
    if title is None and parser.h1:
        title = " ".join("".join(parser.h1).split()) or None
    return _join(parser.pieces), title


def _join(pieces: list[tuple[str, str]]) -> str:
    """The pieces as text: flowing text's whitespace collapsed (a source newline is a
    space), no space at either end of a line it makes, the tags' breaks kept,
    preformatted text as it was."""
    out: list[str] = []
    last = "break"  # the kind of the piece last appended
    for kind, text in pieces:
        if kind == "break":
            if last == "text":
                out[-1] = out[-1].rstrip(" ")
            out.append(text)
        elif kind == "pre":
            out.append(text.replace("\r\n", "\n"))
        else:
            text = _SPACES_RE.sub(" ", text.replace("\n", " "))
            if last == "break" or (last == "text" and out[-1].endswith(" ")):
                text = text.lstrip(" ")
            if not text:
                continue
            out.append(text)
        last = kind
    text = "".join(out)
    return _MANY_BREAKS_RE.sub("\n\n", text).strip()


# -- PDF -------------------------------------------------------------------------------------


def _pdf_text(raw: bytes, name: str) -> str:
    """The PDF's text in reading order (``pdftotext``: not -layout, whose columns of spaces
    would split every quote)."""
    try:
        done = subprocess.run(["pdftotext", "-enc", "UTF-8", "-", "-"], input=raw,
                              capture_output=True, timeout=PDFTOTEXT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise UnreadableDocument("pdftotext is not installed: install poppler-utils") from None
    except subprocess.TimeoutExpired:
        raise UnreadableDocument(
            f"{name}: pdftotext took more than {PDFTOTEXT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise UnreadableDocument(f"{name} is not a readable PDF: "
                                 f"{why[-1] if why else f'pdftotext exit {done.returncode}'}")
    # Form feeds separate pages: a paragraph break serves the reader as well.
    return _normalize(done.stdout.decode("utf-8", errors="replace").replace("\f", "\n\n"))
