"""``somnus activate`` and ``somnus status``: the foreground VM and the memory budget."""

from __future__ import annotations

from rich.table import Table

from cli.common import Clock, JsonFlag, emit_json, err, host, out
from orchestrator import views


def activate(target: str, as_json: JsonFlag = False) -> None:
    """Bring a VM (or the VM of a subsystem) to the foreground; returns when it answers."""
    result = host().swap.activate(target, progress=Clock())
    if as_json:
        emit_json(result)
        return
    came_from = f" (from {result.previous})" if result.previous else ""
    out.print(f"'{result.vm}' is in the foreground{came_from}: {result.path} "
              f"in {result.seconds:.2f}s")


def status(as_json: JsonFlag = False) -> None:
    """The foreground VM, every VM's state and tier, and the memory budget (changes nothing)."""
    view = views.status_view(host().vms)
    if as_json:
        emit_json(view)
        return
    out.print(f"foreground: [bold]{view.foreground or 'none'}[/bold]   policy: {view.policy}   "
              f"memory: {view.budget_used_mib} / {view.budget_limit_mib} MiB")
    table = Table("NAME", "SUBSYSTEM", "STATE", "TIER", "RAM", "RESIDENT")
    for vm in view.vms:
        table.add_row(vm.name, vm.subsystem.value, vm.state.value, vm.tier,
                      f"{vm.memory_mib} MiB", f"{vm.resident_mib} MiB")
    out.print(table if view.vms else "no VMs yet")
    for orphan in view.orphans:
        err.print(f"[yellow]orphan domain[/yellow] {orphan.domain_name}: {orphan.reason} "
                  "('somnus vm prune' removes it)", highlight=False)


def recover(as_json: JsonFlag = False) -> None:
    """Finish or roll back swaps a killed command left open, and reconcile with libvirt.

    Every command that changes something does this first; reads never do.
    """
    notes = host().swap.recover()
    if as_json:
        emit_json({"changes": notes})
        return
    out.print("\n".join(notes) if notes else "nothing to recover")
