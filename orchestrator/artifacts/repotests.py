"""A project's tests as a sandboxed run: the command that runs them (detected from the
repository's files, or given), and the script the sandbox starts.

Detection follows the usual conventions, in this order: pytest (``pytest.ini``,
``conftest.py``, ``[tool.pytest…]`` in ``pyproject.toml``/``setup.cfg``/``tox.ini``,
or ``test_*.py`` files), ``npm test`` (the ``test`` script of ``package.json``, run
as npm would: with ``node_modules/.bin`` on the PATH), ``cargo test``, ``go test``,
and a Makefile's ``test`` target.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import PurePosixPath

from core.errors import InvalidInput

TEST_SCRIPT = ".somnus-test.sh"
TEST_LIMITS: dict[str, object] = {"wall_s": 600.0, "cpu_s": 600.0, "memory_mib": 768,
                                  "pids": 256, "disk_mib": 512, "output_bytes": 4_000_000}
_PYTEST_CONFIG = re.compile(r"^\[(tool:pytest|tool\.pytest[^\]]*|pytest)\]", re.MULTILINE)
_MAKE_TEST = re.compile(r"^test\s*:", re.MULTILINE)


def _text(files: dict[str, bytes], name: str) -> str:
    return files.get(name, b"").decode(errors="replace")


def detect_test_command(files: dict[str, bytes]) -> str:
    """The shell command that runs this repository's tests; a one-line error if none."""
    names = set(files)
    stems = {PurePosixPath(n).name for n in names}
    if ("pytest.ini" in names or "conftest.py" in stems
            or any(_PYTEST_CONFIG.search(_text(files, c))
                   for c in ("pyproject.toml", "setup.cfg", "tox.ini"))
            or any(re.match(r"(test_.*|.*_test)\.py$", s) for s in stems)):
        return "python3 -m pytest -q -p no:cacheprovider"
    if "package.json" in names:
        try:
            script = json.loads(files["package.json"]).get("scripts", {}).get("test")
        except (ValueError, AttributeError):
            script = None
        if isinstance(script, str) and script.strip():
            return script
    if "Cargo.toml" in names:
        return "cargo test --offline"
    if "go.mod" in names:
        return "go test ./..."
    if "Makefile" in names and _MAKE_TEST.search(_text(files, "Makefile")):
        return "make test"
    raise InvalidInput("no test command found (pytest, npm test, cargo test, go test, "
                       "make test): give one after --, e.g. 'somnus project test P -- ./run'")


def runner_script(command: str) -> str:
    """The sandbox's entry: the environment test tools expect, then the command."""
    return (
        "# Written by Somnus: the project's tests, in a sandbox, on a copy of its HEAD.\n"
        'export PATH="$PWD/node_modules/.bin:$PATH" PYTHONDONTWRITEBYTECODE=1\n'
        "export GOCACHE=/tmp/go-cache GOPATH=/tmp/go GO111MODULE=on GOFLAGS=-mod=mod "
        "CARGO_HOME=/tmp/cargo CARGO_TARGET_DIR=/tmp/target\n"
        f"exec sh -c {shlex.quote(command)}\n"
    )
