"""Settling after a swap: demotions the user does not wait for.

``python -m orchestrator.settle`` is the detached worker :class:`DetachedSettler`
starts; it recovers and reconciles first (as every mutating command does), then
puts every background VM in the tier the policy wants. Its log is
``SOMNUS_HOME/logs/somnus.log``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable

from core.config import load_settings
from core.errors import SomnusError

log = logging.getLogger("orchestrator.settle")


class DetachedSettler:
    """Runs ``settle`` in a detached process, so the command returns right away."""

    def __init__(self) -> None:
        self._workers: list[subprocess.Popen[bytes]] = []

    def settle_later(self) -> None:
        # Reap finished workers: a long-lived caller (the API server) must not collect zombies.
        self._workers = [w for w in self._workers if w.poll() is None]
        self._workers.append(subprocess.Popen(
            [sys.executable, "-m", "orchestrator.settle"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=os.environ.copy(),
        ))


class InlineSettler:
    """Runs ``settle`` right away, in this process (benchmarks and tests that measure it)."""

    def __init__(self, settle: Callable[[], object]) -> None:
        self._settle = settle

    def settle_later(self) -> None:
        self._settle()


def main() -> None:
    from orchestrator.host import Host  # the worker is a process of its own: its own root

    settings = load_settings()
    try:
        from core.logs import configure_logging
        from guest_agent.protocol.redaction import RedactingFilter

        configure_logging(settings, "settle", filters=[RedactingFilter()])
    except (ImportError, OSError):
        pass
    try:
        with Host(settings) as host:
            changes = host.swap.settle()
        for change in changes:
            log.info("settled: %s", change)
    except SomnusError as exc:
        # The next command's recovery and settle see the same state and retry.
        log.exception("settle failed: %s", exc)
    except Exception:
        log.exception("settle crashed")
        raise


if __name__ == "__main__":
    main()
