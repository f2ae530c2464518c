"""Shared pieces of the CLI: consoles, progress clock, the host and JSON output."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from core.config import Settings, load_settings
from orchestrator.host import Host

M = TypeVar("M", bound=BaseModel)

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


@functools.cache
def host() -> Host:
    """The composition root of this command (one per process)."""
    return Host(settings())


def finish_run(view: M, as_json: bool, print_outcome: Callable[[M], None],
               failed: bool) -> None:
    """The end of a run followed here: its view as JSON, or its outcome for people; exit
    code 1 when it ``failed``."""
    if as_json:
        emit_json(view)
    else:
        print_outcome(view)
    if failed:
        raise typer.Exit(1)


def emit_json(data: Any) -> None:
    """One JSON document on stdout: a read model (pydantic) or plain data."""
    if isinstance(data, BaseModel):
        out.print_json(data.model_dump_json())
    elif isinstance(data, list) and data and isinstance(data[0], BaseModel):
        out.print_json(json.dumps([d.model_dump(mode="json") for d in data]))
    else:
        out.print_json(json.dumps(data, default=str))
