"""How each language is built and run inside the sandbox, and its compiler's diagnostics.

Paths are the sandbox's: the program's files are in ``/work`` (its working folder),
build output goes to ``/build`` (not reported as produced files).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from guest_agent.protocol.runs import Diagnostic, Language

WORK = "/work"
BUILD = "/build"
BINARY = f"{BUILD}/program"

# gcc, g++, go: "file:line:col: severity: message" (go has no severity).
_GCC = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning|note): "
                  r"(?P<msg>.*)$", re.MULTILINE)  # fmt: skip
_GO = re.compile(r"^(?P<file>[^:\s][^:\n]*\.go):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)$",
                 re.MULTILINE)  # fmt: skip
# rustc: "error[E0425]: message" then " --> file:line:col" on a later line.
_RUST = re.compile(r"^(?P<sev>error|warning)(?:\[\w+\])?: (?P<msg>.*)\n(?:.*\n)*?\s*--> "
                   r"(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+)", re.MULTILINE)  # fmt: skip


def _relative(path: str) -> str:
    path = path.removeprefix(WORK + "/").removeprefix("./")
    return path


def parse_gcc(text: str) -> list[Diagnostic]:
    return [
        Diagnostic(file=_relative(m["file"]), line=int(m["line"]), column=int(m["col"]),
                   severity=m["sev"], message=m["msg"].strip())
        for m in _GCC.finditer(text)
        if m["sev"] != "note"
    ]  # fmt: skip


def parse_go(text: str) -> list[Diagnostic]:
    return [
        Diagnostic(file=_relative(m["file"]), line=int(m["line"]), column=int(m["col"]),
                   message=m["msg"].strip())
        for m in _GO.finditer(text)
    ]  # fmt: skip


def parse_rustc(text: str) -> list[Diagnostic]:
    return [
        Diagnostic(file=_relative(m["file"]), line=int(m["line"]), column=int(m["col"]),
                   severity=m["sev"], message=m["msg"].strip())
        for m in _RUST.finditer(text)
        if not m["msg"].startswith("aborting due to")
    ]  # fmt: skip


@dataclass(frozen=True)
class Toolchain:
    """One language: how to compile (if at all) and how to run ``entry``."""

    language: Language
    run: Callable[[str], list[str]]
    compile: Callable[[str, list[str]], list[str]] | None = None
    diagnostics: Callable[[str], list[Diagnostic]] = lambda _text: []
    env: dict[str, str] = field(default_factory=dict)


TOOLCHAINS: dict[Language, Toolchain] = {
    Language.PYTHON: Toolchain(Language.PYTHON, lambda e: ["python3", "-u", e],
                               env={"PYTHONDONTWRITEBYTECODE": "1"}),
    Language.JAVASCRIPT: Toolchain(Language.JAVASCRIPT, lambda e: ["node", e]),
    Language.BASH: Toolchain(Language.BASH, lambda e: ["bash", e]),
    Language.C: Toolchain(Language.C, lambda _e: [BINARY],
                          lambda _e, srcs: ["gcc", "-O1", "-o", BINARY, *srcs, "-lm"],
                          parse_gcc),
    Language.CPP: Toolchain(Language.CPP, lambda _e: [BINARY],
                            lambda _e, srcs: ["g++", "-O1", "-o", BINARY, *srcs], parse_gcc),
    # rustc follows `mod` declarations from the entry; cargo would need a registry.
    Language.RUST: Toolchain(Language.RUST, lambda _e: [BINARY],
                             lambda e, _srcs: ["rustc", "--edition", "2021", "-o", BINARY, e],
                             parse_rustc),
    Language.GO: Toolchain(Language.GO, lambda _e: [BINARY],
                           lambda _e, srcs: ["go", "build", "-o", BINARY, *srcs], parse_go,
                           env={"GOCACHE": f"{BUILD}/go-cache", "GOPATH": f"{BUILD}/go",
                                "GO111MODULE": "off", "GOFLAGS": "-buildvcs=false",
                                "GOTOOLCHAIN": "local"}),
}  # fmt: skip
