"""``somnus model``: GGUF models for the VMs' agents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import JsonFlag, emit_json, host, out
from orchestrator.guest_models import add_model

model_app = typer.Typer(help="GGUF models served by the VMs' agents.", no_args_is_help=True)


@model_app.command("add")
def model_add(
    path: Path,
    vm: Annotated[str, typer.Option("--vm", help="The VM to copy it into.")],
    use: Annotated[bool, typer.Option(help="Make the agent serve this model now.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Copy a GGUF model into a VM (and with --use, switch its agent to it)."""
    guest_path = add_model(host().vms, vm, path, use)
    if as_json:
        emit_json({"vm": vm, "path": guest_path, "serving": use})
    else:
        out.print(f"{path.name} -> {vm}:{guest_path}" + (" (now serving)" if use else ""))
