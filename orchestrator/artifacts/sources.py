"""An artifact's inputs, checked: its name, its files (from disk), its entry point and
its limits; each refusal is one line that says what to change."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from pydantic import ValidationError

from core.errors import Conflict, InvalidInput
from guest_agent.protocol.runs import (
    MAX_SOURCE_BYTES,
    SOURCE_SUFFIXES,
    Language,
    RunLimits,
    SourceFile,
    default_limits,
    source_files,
)

ARTIFACT_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
NAME_RE = re.compile(ARTIFACT_NAME_PATTERN)
# Literal paths beside /artifacts/{name} in the REST API.
RESERVED_ARTIFACT_NAMES = frozenset({"runs", "web"})
SKIPPED_DIRS = frozenset({".git", "__pycache__", "node_modules", "target", ".venv"})


def check_artifact_name(name: str) -> str:
    """``name`` if an artifact may have it, else a one-line ``InvalidInput``."""
    if not NAME_RE.match(name):
        raise InvalidInput(f"artifact name '{name}': use a-z, 0-9, '.', '_', '-' "
                           "(up to 63, starting with a letter or digit)")
    if name in RESERVED_ARTIFACT_NAMES:
        raise InvalidInput(f"artifact name '{name}' is reserved (an action of the REST API)")
    return name


def read_sources(paths: list[Path]) -> list[SourceFile]:
    """Files given on the command line: a file by its name, a folder by its contents."""
    found: dict[str, SourceFile] = {}
    total = 0
    for given in paths:
        if not given.exists():
            raise InvalidInput(f"no such file or folder: {given}")
        if given.is_dir():
            items = [(p, p.relative_to(given).as_posix()) for p in sorted(given.rglob("*"))
                     if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(given).parts)]
        else:
            items = [(given, given.name)]
        for path, name in items:
            data = path.read_bytes()
            total += len(data)
            if total > MAX_SOURCE_BYTES:
                raise InvalidInput(f"the artifact's files are over {MAX_SOURCE_BYTES // 2**20} "
                                   "MiB: leave out build output and data sets")
            found[name] = source_file(name, data)
    if not found:
        raise InvalidInput("no files given: name a file or a folder with the artifact's code")
    return list(found.values())


def source_file(name: str, data: bytes) -> SourceFile:
    try:
        text, encoded = data.decode(), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(data).decode(), True
    try:
        return SourceFile(path=name, content=text, base64=encoded)
    except ValidationError:
        raise InvalidInput(f"'{name}' cannot be a file of an artifact: use a relative path "
                           "without '.', '..' or a leading '-'") from None


def pick_entry(language: Language, files: list[SourceFile], entry: str | None) -> str:
    """The file a run starts from: the one given, else ``main.<suffix>``, else the first
    source file of the language, else the first file."""
    names = sorted(f.path for f in files)
    if entry is not None:
        if entry not in names:
            raise Conflict(f"entry '{entry}' is not one of the artifact's files: "
                           f"{', '.join(names[:10])}")
        return entry
    sources = source_files(language, names)
    for stem in ("index", "main") if language is Language.HTML else ("main",):
        for suffix in SOURCE_SUFFIXES[language]:
            if f"{stem}{suffix}" in sources:
                return f"{stem}{suffix}"
    return (sources or names)[0]


def merge_limits(language: Language, overrides: dict[str, object], web: bool = False,
                 ) -> RunLimits:
    """The language's defaults with the user's overrides, checked (one-line error)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if unknown := sorted(set(given) - set(RunLimits.model_fields)):
        raise InvalidInput(f"unknown limit '{unknown[0]}' (limits: "
                           f"{', '.join(RunLimits.model_fields)})")
    try:
        return RunLimits.model_validate({**default_limits(language, web).model_dump(), **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"limit {first['loc'][0]}: {first['msg']}") from None


def dump_files(files: list[SourceFile]) -> str:
    return json.dumps([f.model_dump() for f in files])
