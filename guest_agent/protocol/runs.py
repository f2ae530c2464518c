"""Sandboxed runs: what the host asks the artifacts VM's agent to run, and what comes back.

``POST /runs`` takes a ``RunRequest`` and answers with server-sent ``RunEvent``s:
``started``, then ``stdout``/``stderr`` chunks as the program writes them (a
``phase`` event between compiling and running), then exactly one ``result``.
Per-language default limits live here so that both sides agree on them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath

from pydantic import BaseModel, Field, field_validator

RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_SOURCE_BYTES = 8 * 1024 * 1024  # all of a run's files together


class Language(StrEnum):
    """What the artifacts image has a toolchain for (Debian 12's packages)."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    BASH = "bash"
    C = "c"
    CPP = "cpp"
    RUST = "rust"
    GO = "go"
    HTML = "html"  # a static web artifact: opened, not run


class NetworkMode(StrEnum):
    """A run's network. ``off``: its own namespace with loopback only (the default)."""

    OFF = "off"


class LimitName(StrEnum):
    """The limit that stopped a run."""

    WALL_TIME = "wall_time"
    CPU_TIME = "cpu_time"
    MEMORY = "memory"
    PIDS = "pids"
    FILE_SIZE = "file_size"
    DISK = "disk"
    OUTPUT = "output"


class RunLimits(BaseModel):
    """Every limit of one run; ``default_limits`` gives a language's defaults."""

    wall_s: float = Field(default=30, gt=0, le=86400, description="wall time of the run phase")
    compile_s: float = Field(default=300, gt=0, le=3600, description="wall time of compiling")
    cpu_s: float = Field(default=30, gt=0, le=86400, description="CPU time, all processes")
    memory_mib: int = Field(default=256, ge=16, le=65536)
    pids: int = Field(default=64, ge=4, le=4096, description="processes and threads at once")
    open_files: int = Field(default=256, ge=16, le=65536)
    file_size_mib: int = Field(default=64, ge=1, le=65536, description="largest file written")
    disk_mib: int = Field(default=256, ge=1, le=65536, description="all files written")
    output_bytes: int = Field(default=1_000_000, ge=1024, le=1024**3, description="stdout+stderr")
    network: NetworkMode = NetworkMode.OFF


# A language's source files; a compiler is given all of them (Rust: the entry only).
SOURCE_SUFFIXES: dict[Language, tuple[str, ...]] = {
    Language.PYTHON: (".py",),
    Language.JAVASCRIPT: (".js", ".mjs", ".cjs"),
    Language.BASH: (".sh", ".bash"),
    Language.C: (".c",),
    Language.CPP: (".cpp", ".cc", ".cxx"),
    Language.RUST: (".rs",),
    Language.GO: (".go",),
    Language.HTML: (".html", ".htm"),
}
# Languages a web artifact's own server can be written in (others: static files only).
WEB_SERVER_LANGUAGES = frozenset({Language.PYTHON, Language.JAVASCRIPT})
WEB_GUEST_PORT = 8701  # where the artifacts VM serves the open web artifact
WEB_APP_PORT = 8000  # the $PORT a web artifact's server listens on, inside its sandbox


def source_files(language: Language, paths: list[str]) -> list[str]:
    """The paths with one of the language's suffixes, sorted."""
    return sorted(p for p in paths if PurePosixPath(p).suffix in SOURCE_SUFFIXES[language])


# Compilers under TCG need more than the programs they build.
COMPILED = frozenset({Language.C, Language.CPP, Language.RUST, Language.GO})
COMPILE_MEMORY_MIB = 768


def default_limits(language: Language, web: bool = False) -> RunLimits:
    """A language's default limits (Go's runtime alone starts a dozen threads); a web
    artifact's server runs for up to 8 hours."""
    limits = RunLimits(pids=128) if language is Language.GO else RunLimits()
    if web:
        limits = limits.model_copy(update={"wall_s": 8 * 3600.0, "cpu_s": 3600.0})
    return limits


# A relative path without '.', '..' or empty parts, not starting with '-'; no
# lookarounds, so that pydantic and JSON Schema tools read it alike.
_PART = r"(?:[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
_FIRST = r"(?:[^/.\-][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
RELATIVE_PATH_PATTERN = rf"^{_FIRST}(?:/{_PART})*$"


class SourceFile(BaseModel):
    """One file of the program, by relative path; text, or base64 for bytes."""

    # Strict: the REST API takes these as they are (no 0 for false, no number for text).
    path: str = Field(min_length=1, max_length=255, strict=True, pattern=RELATIVE_PATH_PATTERN,
                      description="relative, inside the artifact's folder")
    content: str = Field(strict=True)
    base64: bool = Field(default=False, strict=True)


class RunRequest(BaseModel):
    """Run ``entry`` of ``files`` in a fresh sandbox."""

    run_id: str = Field(description="the host's id for the run: [a-z0-9-], up to 63")
    language: Language
    files: list[SourceFile] = Field(min_length=1, max_length=1000)
    entry: str
    args: list[str] = Field(default_factory=list, max_length=256)
    stdin: str = ""
    limits: RunLimits = Field(default_factory=RunLimits)

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str) -> str:
        if not RUN_ID_RE.match(value):
            raise ValueError(f"run id '{value}' must be [a-z0-9-], up to 63 characters")
        return value


class RunPhase(StrEnum):
    COMPILE = "compile"
    RUN = "run"


class RunOutcome(StrEnum):
    """How a run ended."""

    OK = "ok"  # exit code 0
    FAILED = "failed"  # non-zero exit code or a signal of its own
    COMPILE_ERROR = "compile_error"
    LIMIT = "limit"  # stopped by one of its limits (``RunResult.limit``)
    ERROR = "error"  # the sandbox itself failed: not the program's fault


class Diagnostic(BaseModel):
    """One compiler message, where the compiler says file and line."""

    file: str
    line: int
    column: int | None = None
    severity: str = "error"
    message: str


class ProducedFile(BaseModel):
    """A file the run wrote (new or changed) in its working folder."""

    path: str
    size: int
    sha256: str


class RunResult(BaseModel):
    outcome: RunOutcome
    exit_code: int | None = None
    signal: str | None = None
    limit: LimitName | None = None
    duration_s: float = Field(description="the run phase, wall time")
    compile_s: float | None = None
    cpu_s: float = 0.0
    peak_memory_mib: float | None = None
    truncated: bool = Field(default=False, description="output went over output_bytes")
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    diagnostics: list[Diagnostic] = Field(default_factory=list)
    files: list[ProducedFile] = Field(default_factory=list)
    error: str | None = None


class RunEventKind(StrEnum):
    STARTED = "started"
    PHASE = "phase"
    STDOUT = "stdout"
    STDERR = "stderr"
    RESULT = "result"


class RunEvent(BaseModel):
    kind: RunEventKind
    data: str | None = Field(default=None, description="stdout/stderr: the text; started: "
                             "the run's id (its log: GET /artifacts/runs/{id})")
    phase: RunPhase | None = None
    result: RunResult | None = None


class WebMode(StrEnum):
    STATIC = "static"  # files served by the agent
    SERVER = "server"  # the artifact's own HTTP server, in a sandbox, on $PORT


class WebRequest(RunRequest):
    """Open a web artifact (replacing the one open): static files, or a server started
    with ``$PORT`` set (``WEB_SERVER_LANGUAGES``)."""


class WebStatus(BaseModel):
    run_id: str
    mode: WebMode
    entry: str
    started_at: float
    running: bool = Field(description="static: always; server: its sandbox still runs")
    result: RunResult | None = Field(default=None, description="a server's, once it ended")
