"""Code fences in model answers: parse them into blocks, and render blocks back as fences.

Accepted filename conventions, in order of precedence: an attribute in the info
string (```python title="app.py"``, ``filename=``, ``file=``, ``path=``), a colon
(```python:app.py``), a second word (```python app.py``), a path as the only word
(```app.py``), and a first-line comment hint (``# file: app.py``, ``// file: app.js``,
``-- file:``, ``/* file: */``, ``<!-- file: -->``), which is removed from the content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.devsessions.languages import (
    is_known_language,
    language_for_path,
    looks_like_path,
    normalize_language,
    safe_path,
)

_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<marker>`{3,}|~{3,})(?P<info>.*)$")
_ATTR = re.compile(r"""(?P<key>[\w-]+)=(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>\S+))""")
_NAME_KEYS = ("filename", "file", "title", "path", "name")
_HINT = re.compile(
    r"^\s*(?:#|//|--|;|/\*|<!--)\s*(?:file(?:name)?|path)\s*:\s*(?P<name>\S+?)\s*(?:\*/|-->)?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Fence:
    """One fenced code block: its language, content (ending in a newline) and file name."""

    language: str
    content: str
    filename: str | None = None


def parse_fences(text: str) -> list[Fence]:
    """Every non-empty fenced block in ``text``, in order (CommonMark fence rules).

    An unclosed fence runs to the end, as a truncated model answer would leave it.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    fences: list[Fence] = []
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        i += 1
        if opening is None:
            continue
        marker, info = opening["marker"], opening["info"]
        if marker[0] == "`" and "`" in info:  # inline code such as ```x```, not a fence
            continue
        closing = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
        body: list[str] = []
        while i < len(lines) and not closing.match(lines[i]):
            body.append(_dedent(lines[i], len(opening["indent"])))
            i += 1
        i += 1
        fence = _make_fence(info.strip(), body)
        if fence is not None:
            fences.append(fence)
    return fences


def render_fence(language: str, content: str, filename: str | None = None) -> str:
    """A fence that :func:`parse_fences` reads back as the same block."""
    longest = max((len(run) for run in re.findall(r"`{3,}", content)), default=2)
    marker = "`" * (longest + 1)
    info = f"{language} {filename}" if filename else language
    body = content if content.endswith("\n") or not content else content + "\n"
    return f"{marker}{info}\n{body}{marker}\n"


def _dedent(line: str, indent: int) -> str:
    # CommonMark: content lines lose up to as many spaces as the opening fence had.
    stripped = len(line) - len(line.lstrip(" "))
    return line[min(indent, stripped):]


def _make_fence(info: str, body: list[str]) -> Fence | None:
    language, filename = _parse_info(info)
    hint = _HINT.match(body[0]) if body else None
    if hint is not None:
        hinted = safe_path(hint["name"])
        if hinted is not None and filename in (None, hinted):
            filename = hinted
            body = body[1:]
    if not any(line.strip() for line in body):
        return None
    if language == "text" and filename is not None:
        language = language_for_path(filename) or language
    return Fence(language=language, content="".join(f"{line}\n" for line in body),
                 filename=filename)


def _parse_info(info: str) -> tuple[str, str | None]:
    """Language and file name from a fence's info string."""
    attrs = {m["key"].lower(): m["dq"] or m["sq"] or m["bare"] or "" for m in _ATTR.finditer(info)}
    words = _ATTR.sub(" ", info).replace("{", " ").replace("}", " ").split()
    first = words[0] if words else ""
    candidates = [attrs[key] for key in _NAME_KEYS if key in attrs]
    if ":" in first and not first.startswith(":"):
        first, _, after_colon = first.partition(":")
        candidates.append(after_colon)
    candidates += [word for word in words[1:] if looks_like_path(word)]
    if looks_like_path(first) and not is_known_language(first):
        candidates.append(first)
        first = language_for_path(first) or ""
    filename = next((path for c in candidates if (path := safe_path(c))), None)
    return normalize_language(first), filename
