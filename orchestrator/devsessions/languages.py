"""Language names for code fences: normalising aliases and mapping to and from file extensions."""

from __future__ import annotations

import posixpath
import re

# What models write after ``` -> one canonical name, so "py" and "python" blocks are the same.
_ALIASES = {
    "py": "python", "python3": "python", "py3": "python",
    "js": "javascript", "jsx": "javascript", "node": "javascript",
    "ts": "typescript", "tsx": "typescript",
    "sh": "bash", "shell": "bash", "zsh": "bash", "console": "bash",
    "yml": "yaml", "rs": "rust", "c++": "cpp", "cc": "cpp", "golang": "go", "rb": "ruby",
    "md": "markdown", "kt": "kotlin", "cs": "csharp", "c#": "csharp",
    "txt": "text", "plaintext": "text", "plain": "text", "": "text",
}

_EXTENSIONS = {
    "python": "py", "javascript": "js", "typescript": "ts", "bash": "sh", "yaml": "yml",
    "rust": "rs", "cpp": "cpp", "c": "c", "go": "go", "ruby": "rb", "markdown": "md",
    "kotlin": "kt", "csharp": "cs", "java": "java", "json": "json", "toml": "toml", "ini": "ini",
    "html": "html", "css": "css", "sql": "sql", "xml": "xml", "php": "php", "swift": "swift",
    "lua": "lua", "r": "r", "diff": "diff", "makefile": "mk", "dockerfile": "dockerfile",
    "text": "txt",
}

_BY_EXTENSION = {ext: lang for lang, ext in _EXTENSIONS.items()} | {
    "jsx": "javascript", "mjs": "javascript", "tsx": "typescript", "pyi": "python",
    "yaml": "yaml", "h": "c", "hpp": "cpp", "cc": "cpp", "htm": "html", "bash": "bash",
}

_BY_NAME = {"makefile": "makefile", "dockerfile": "dockerfile"}

_PATH = re.compile(r"/?[\w.@+-]+(?:/[\w.@+-]+)*")


def normalize_language(name: str) -> str:
    """The canonical lower-case name for a fence's language tag."""
    name = name.strip().lower()
    return _ALIASES.get(name, name)


def language_for_path(path: str) -> str | None:
    """The language a file name implies, if its extension (or name) is known."""
    base = posixpath.basename(path).lower()
    if base in _BY_NAME:
        return _BY_NAME[base]
    _, dot, ext = base.rpartition(".")
    return _BY_EXTENSION.get(ext) if dot else None


def extension_for(language: str) -> str:
    """A file extension for a language; unknown languages keep their (sanitised) name."""
    return _EXTENSIONS.get(language) or re.sub(r"[^a-z0-9]", "", language.lower()) or "txt"


def is_known_language(name: str) -> bool:
    return normalize_language(name) in _EXTENSIONS


def looks_like_path(token: str) -> bool:
    """Whether a token is plausibly a file name rather than a language or attribute."""
    if not _PATH.fullmatch(token.replace("\\", "/")):
        return False
    base = posixpath.basename(token.replace("\\", "/"))
    return "/" in token or "." in base.lstrip(".") or base.lower() in _BY_NAME


def safe_path(name: str) -> str | None:
    """A relative POSIX path inside the project, or None if the name cannot be one.

    These paths become files in a git work tree later, so nothing may escape it.
    """
    name = name.strip().strip("'\"`").replace("\\", "/")
    if not name or any(c.isspace() or ord(c) < 32 for c in name):
        return None
    path = posixpath.normpath(name).lstrip("/")
    if path in ("", ".") or path == ".." or path.startswith("../") or path.endswith("/"):
        return None
    return path
