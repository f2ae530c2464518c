"""Shared pieces of the CLI: consoles, progress clock, settings and JSON output."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from orchestrator.config import Settings, load_settings
from orchestrator.models import VMRecord
from orchestrator.vms import VMInfo, VMService

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class Clock:
    """Prefixes progress lines with the seconds since the command started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        err.print(f"[dim]{time.monotonic() - self.started:6.1f}s[/dim] {message}")


def settings() -> Settings:
    return load_settings()


def service() -> VMService:
    return VMService(settings())


def emit_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def vm_dict(record: VMRecord) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude={"id"})


def info_dict(info: VMInfo) -> dict[str, Any]:
    return {
        **vm_dict(info.record),
        "paths": {"disk": str(info.paths.overlay), "seed": str(info.paths.seed),
                  "serial_log": str(info.paths.serial_log)},
        "history": [h.model_dump(mode="json", exclude={"id"}) for h in info.history],
        "agent": info.agent.model_dump(mode="json") if info.agent else None,
    }
