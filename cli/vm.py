"""``somnus vm``: create, run and inspect VMs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import Clock, JsonFlag, emit_json, err, host, out
from guest_agent.protocol import Subsystem
from orchestrator import views

vm_app = typer.Typer(help="Create, run and inspect VMs.", no_args_is_help=True)


@vm_app.command("create")
def vm_create(
    name: str,
    subsystem: Annotated[Subsystem, typer.Option(help="What the VM is for.")],
    memory: Annotated[int | None, typer.Option(help="RAM in MiB.")] = None,
    vcpus: Annotated[int | None, typer.Option(help="Virtual CPUs.")] = None,
    image: Annotated[str | None, typer.Option(help="Image hash prefix (default: current).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the agent answers.")] = True,
    template: Annotated[bool, typer.Option(
        "--template/--cold",
        help="Start from the saved first boot of VMs of this shape (the first one boots "
             "cold and is saved); --cold always boots from the image.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a VM from the base image and boot it (or start it from a template)."""
    record, timings = host().vms.create(name, subsystem, memory, vcpus, image, wait, Clock(),
                                        from_template=template)
    if as_json:
        emit_json({**views.vm_detail(host().vms, name).model_dump(mode="json"),
                   "timings": timings})
    else:
        out.print(f"VM '{name}' is {record.state.value} "
                  f"(ssh 127.0.0.1:{record.ssh_port}, agent 127.0.0.1:{record.agent_port})")


@vm_app.command("list")
def vm_list(as_json: JsonFlag = False) -> None:
    """List VMs and their live state (the same document as GET /vms)."""
    fleet = views.fleet_view(host().vms)
    if as_json:
        emit_json(fleet)
        return
    table = Table("NAME", "SUBSYSTEM", "STATE", "TIER", "MEMORY", "VCPUS", "SSH", "AGENT",
                  "ACCEL")
    for v in fleet.vms:
        table.add_row(v.name, v.subsystem.value, v.state.value, v.tier, f"{v.memory_mib} MiB",
                      str(v.vcpus), str(v.ssh_port), str(v.agent_port), v.accel)
    out.print(table if fleet.vms else "no VMs yet: try 'somnus vm create chat --subsystem chat'")


@vm_app.command("start")
def vm_start(
    name: str,
    wait: Annotated[bool, typer.Option(help="Wait until the agent answers.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Boot a stopped VM (or restore a saved one); it becomes the foreground."""
    timings = host().vms.start(name, wait, Clock())
    if as_json:
        emit_json({"name": name, "timings": timings})
    else:
        out.print(f"VM '{name}' started")


@vm_app.command("stop")
def vm_stop(
    name: str,
    force: Annotated[bool, typer.Option(help="Power off without asking the guest.")] = False,
) -> None:
    """Shut a VM down (ACPI, then power off after a timeout)."""
    clean = host().vms.stop(name, force)
    out.print(f"VM '{name}' stopped" + ("" if clean else " (powered off)"))


YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@vm_app.command("delete")
def vm_delete(name: str, yes: YesFlag = False) -> None:
    """Delete a VM: its domain, disk, seed and record (asks first unless --yes)."""
    host().vms.store.get_vm(name)  # an unknown name fails before the question
    if not yes:
        typer.confirm(f"Delete VM '{name}' with its disk and snapshots?", abort=True,
                      err=True)
    host().vms.delete(name)
    out.print(f"VM '{name}' deleted")


@vm_app.command("prune")
def vm_prune(
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed.")] = False,
    yes: YesFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove libvirt domains of this Somnus home that no VM record owns (orphans)."""
    orphans = host().vms.orphans()
    for orphan in orphans:
        err.print(f"orphan: {orphan.domain_name} ({orphan.reason})", highlight=False)
    if dry_run or not orphans:
        if as_json:
            emit_json({"orphans": [o.domain_name for o in orphans], "removed": []})
        elif not orphans:
            out.print("no orphan domains")
        return
    if not yes:
        typer.confirm(f"Power off and undefine {len(orphans)} domain(s)?", abort=True,
                      err=True)
    removed = host().vms.prune(orphans)
    if as_json:
        emit_json({"orphans": [o.domain_name for o in orphans], "removed": removed})
    else:
        for name in removed:
            out.print(f"removed {name}")


@vm_app.command("ssh", context_settings={"allow_extra_args": True,
                                         "ignore_unknown_options": True})
def vm_ssh(ctx: typer.Context, name: str) -> None:
    """Open a shell in the VM, or run a command: somnus vm ssh NAME -- COMMAND."""
    argv = host().vms.ssh_argv(name, list(ctx.args) or None)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@vm_app.command("console")
def vm_console(
    name: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Last N lines.")] = 50,
) -> None:
    """Show the VM's serial console log."""
    path = host().vms.console_log(name)
    text = path.read_text(errors="replace") if path.exists() else ""
    sys.stdout.write("\n".join(text.splitlines()[-lines:]) + "\n")
    if follow:
        _follow(path, len(text.encode()))


def _follow(path: Path, offset: int) -> None:
    with open(path, "rb") as handle:
        handle.seek(offset)
        try:
            while True:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            return


@vm_app.command("info")
def vm_info(name: str, as_json: JsonFlag = False) -> None:
    """Show one VM: resources, ports, paths, state history and what its agent reports."""
    detail = views.vm_detail(host().vms, name)
    if as_json:
        emit_json(detail)
        return
    data = detail.model_dump(mode="json")
    table = Table(show_header=False, box=None)
    for key in ("name", "subsystem", "state", "tier", "memory_mib", "vcpus", "accel",
                "ssh_port", "agent_port", "image_hash", "created_at", "last_error",
                "error_count"):
        table.add_row(key, str(data[key]))
    for key, value in data["paths"].items():
        table.add_row(key, value)
    agent = data["agent"]
    if agent:
        table.add_row("guest kernel", agent["kernel"])
        table.add_row("models", ", ".join(m["name"] for m in agent["models"]) or "none")
    security = data["security"] + (f" ({data['security_hold']})" if data["security_hold"] else "")
    table.add_row("security", security)
    readings = data["security_report"]["metrics"]
    if readings:
        table.add_row("security readings", ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(readings.items())))
    table.add_row("history", " -> ".join(h["to_state"] for h in data["history"]))
    out.print(table)
