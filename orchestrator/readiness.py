"""Staged readiness, as Lima does it: each stage visible, timed and bounded.

domain running -> SSH answers -> cloud-init finished -> agent /health with the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import GuestError, ReadinessTimeout
from core.types import Progress


class CloudInitFailed(GuestError):
    """cloud-init finished with errors."""


@dataclass(frozen=True)
class Stage:
    """One readiness stage: ``check`` returns True once it has passed."""

    name: str
    timeout_s: float
    check: Callable[[], bool]


def cloud_init_result(result_json: str | None) -> bool:
    """Interpret ``/run/cloud-init/result.json``: absent → not yet; errors → raise."""
    if not result_json or not result_json.strip():
        return False
    errors = json.loads(result_json).get("v1", {}).get("errors", [])
    if errors:
        raise CloudInitFailed(f"cloud-init finished with errors: {'; '.join(errors)[:300]}")
    return True


def wait_ready(
    vm_name: str,
    stages: list[Stage],
    alive: Callable[[], bool],
    log_path: str,
    progress: Progress | None = None,
    poll_s: float = 1.0,
) -> dict[str, float]:
    """Pass every stage in order; return the seconds each took.

    Raises :class:`ReadinessTimeout` naming the stage and the serial log, or a
    :class:`GuestError` at once if the domain dies on the way.
    """
    timings: dict[str, float] = {}
    for stage in stages:
        started = time.monotonic()
        deadline = started + stage.timeout_s
        while True:
            if stage.check():
                break
            if not alive():
                raise GuestError(
                    f"VM '{vm_name}' stopped during stage '{stage.name}'; serial log: {log_path}"
                )
            if time.monotonic() >= deadline:
                raise ReadinessTimeout(vm_name, stage.name, stage.timeout_s, log_path)
            time.sleep(poll_s)
        timings[stage.name] = round(time.monotonic() - started, 2)
        if progress:
            progress(f"{stage.name}: ok after {timings[stage.name]:.1f}s")
    return timings
