"""``somnus activate`` and ``somnus status``: the foreground VM and the memory budget."""

from __future__ import annotations

from dataclasses import asdict

from rich.table import Table

from orchestrator.cli.common import Clock, JsonFlag, emit_json, out, service
from orchestrator.swap import SwapEngine


def activate(target: str, as_json: JsonFlag = False) -> None:
    """Bring a VM (or the VM of a subsystem) to the foreground; returns when it answers."""
    result = SwapEngine(service()).activate(target, progress=Clock())
    if as_json:
        emit_json(asdict(result))
        return
    came_from = f" (from {result.previous})" if result.previous else ""
    out.print(f"'{result.vm}' is in the foreground{came_from}: {result.path} "
              f"in {result.seconds:.2f}s")


def status(as_json: JsonFlag = False) -> None:
    """The foreground VM, every VM's state and tier, and the memory budget."""
    view = SwapEngine(service()).status()
    if as_json:
        emit_json(asdict(view))
        return
    out.print(f"foreground: [bold]{view.foreground or 'none'}[/bold]   policy: {view.policy}   "
              f"memory: {view.budget_used_mib} / {view.budget_limit_mib} MiB")
    table = Table("NAME", "SUBSYSTEM", "STATE", "TIER", "RAM", "RESIDENT")
    for vm in view.vms:
        table.add_row(vm.name, vm.subsystem, vm.state, vm.tier, f"{vm.memory_mib} MiB",
                      f"{vm.resident_mib} MiB")
    out.print(table if view.vms else "no VMs yet")
