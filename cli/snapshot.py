"""``somnus vm snapshot``: disk-and-memory snapshots of a VM."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from cli.common import JsonFlag, emit_json, host, out
from orchestrator import views

snapshot_app = typer.Typer(help="Snapshots of a VM (disk, and memory when running).",
                           no_args_is_help=True)


@snapshot_app.command("create")
def snapshot_create(
    vm: str,
    name: str,
    description: Annotated[str, typer.Option(help="A note kept with the snapshot.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Take a snapshot of VM called NAME."""
    snap = views.SnapshotView.model_validate(host().vms.snapshot_create(vm, name, description))
    if as_json:
        emit_json(snap)
    else:
        out.print(f"snapshot '{name}' of '{vm}' taken ({snap.state})")


@snapshot_app.command("list")
def snapshot_list(vm: str, as_json: JsonFlag = False) -> None:
    """List a VM's snapshots, oldest first."""
    snaps = views.snapshot_views(host().vms, vm)
    if as_json:
        emit_json([s.model_dump(mode="json") for s in snaps])
        return
    table = Table("NAME", "TAKEN", "STATE", "DESCRIPTION")
    for s in snaps:
        taken = datetime.fromtimestamp(s.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(s.name, taken, s.state, s.description)
    out.print(table if snaps else f"'{vm}' has no snapshots")


@snapshot_app.command("revert")
def snapshot_revert(vm: str, name: str) -> None:
    """Return VM to snapshot NAME (its disk, and memory if taken running)."""
    state = host().vms.snapshot_revert(vm, name)
    out.print(f"'{vm}' reverted to '{name}' ({state.value})")


@snapshot_app.command("delete")
def snapshot_delete(vm: str, name: str) -> None:
    """Delete snapshot NAME of VM."""
    host().vms.snapshot_delete(vm, name)
    out.print(f"snapshot '{name}' of '{vm}' deleted")
