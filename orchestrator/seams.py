"""The host's seams: what the composition root plugs into the services.

Each is a Protocol, so tests hand in the fakes of ``tests/fakes.py`` instead of
patching modules, and the real implementations stay small and separate.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from core.types import Progress
from orchestrator.agent_client import AgentClient
from orchestrator.models import VMRecord

# Fault injection for the crash tests: the process SIGKILLs itself on reaching this point.
FAULT_ENV = "SOMNUS_FAULT_AT"


class AgentFactory(Protocol):
    """A client for a VM's guest agent."""

    def __call__(self, record: VMRecord) -> AgentClient: ...


class Settler(Protocol):
    """Runs the swap engine's ``settle`` after a command: demotions the user does not wait for."""

    def settle_later(self) -> None: ...


class FaultHook(Protocol):
    """Called at every named fault point of a swap; the crash tests make it kill the process."""

    def __call__(self, point: str) -> None: ...


class Entry(Protocol):
    """A VM on its way into the foreground: the caller reports when its QEMU runs."""

    def started(self) -> None: ...


class Foreground(Protocol):
    """The policy that makes room for a VM entering RAM and makes it the foreground."""

    def entering(self, target: VMRecord,
                 progress: Progress | None = None) -> AbstractContextManager[Entry]: ...


def env_faults(point: str) -> None:
    """The default fault hook: ``SOMNUS_FAULT_AT=<point>`` kills this process there."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


class _NoEntry:
    def started(self) -> None:
        """Nothing to record: no foreground change."""


NO_ENTRY = _NoEntry()  # for a VM that comes up without entering the foreground


class NoForeground:
    """No policy: a VM enters RAM when admission allows, and nothing else steps back."""

    @contextmanager
    def entering(self, target: VMRecord, progress: Progress | None = None) -> Iterator[Entry]:
        yield NO_ENTRY
