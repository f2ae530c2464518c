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


# The stages a Somnus image runs; config and final are masked in the image
# (images/files/hooks/customize.sh), and every module a seed uses is in "init".
CLOUD_INIT_STAGES = ("init-local", "init")
CLOUD_INIT_STATUS = "/run/cloud-init/status.json"


def cloud_init_done(status_json: str | None) -> bool:
    """Interpret cloud-init's ``status.json``: init stage finished → done; errors → raise.

    Absent or half-written (read while cloud-init replaces it) means not yet.
    """
    try:
        status = json.loads(status_json or "").get("v1", {})
    except (json.JSONDecodeError, AttributeError):
        return False
    stages = [status.get(name) or {} for name in CLOUD_INIT_STAGES]
    errors = [str(e) for stage in stages for e in stage.get("errors") or []]
    if errors:
        raise CloudInitFailed(f"cloud-init finished with errors: {'; '.join(errors)[:300]}")
    return stages[-1].get("finished") is not None


def wait_ready(
    vm_name: str,
    stages: list[Stage],
    why_down: Callable[[], str | None],
    log_path: str,
    progress: Progress | None = None,
    poll_s: float = 1.0,
) -> dict[str, float]:
    """Pass every stage in order; return the seconds each took.

    Raises :class:`ReadinessTimeout` naming the stage and the serial log, or a
    :class:`GuestError` at once if the domain dies on the way (``why_down`` says why;
    None while it runs).
    """
    timings: dict[str, float] = {}
    for stage in stages:
        started = time.monotonic()
        deadline = started + stage.timeout_s
        while True:
            if stage.check():
                break
            if (why := why_down()) is not None:
                raise GuestError(f"VM '{vm_name}' stopped during stage '{stage.name}': {why}; "
                                 f"serial log: {log_path}")
            if time.monotonic() >= deadline:
                raise ReadinessTimeout(vm_name, stage.name, stage.timeout_s, log_path)
            time.sleep(poll_s)
        timings[stage.name] = round(time.monotonic() - started, 2)
        if progress:
            progress(f"{stage.name}: ok after {timings[stage.name]:.1f}s")
    return timings
