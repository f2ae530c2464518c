"""``python -m orchestrator.settle``: the detached worker that finishes a swap's demotions."""

from __future__ import annotations

from contextlib import suppress

from orchestrator.config import load_settings
from orchestrator.errors import SomnusError
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService


def main() -> None:
    # On failure the next command's recovery and settle see the same state and retry.
    with suppress(SomnusError):
        SwapEngine(VMService(load_settings())).settle()


if __name__ == "__main__":
    main()
