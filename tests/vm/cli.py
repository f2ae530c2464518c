"""The real CLI in a subprocess, against a test home."""

from __future__ import annotations

import os
import subprocess
import sys


def somnus(
    env: dict[str, str], *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run ``somnus ARGS`` with the test home's environment; output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )
