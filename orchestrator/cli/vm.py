"""``somnus vm``: create, run and inspect VMs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from guest_agent.protocol import Subsystem
from orchestrator.cli.common import (
    Clock,
    JsonFlag,
    emit_json,
    info_dict,
    out,
    service,
    vm_dict,
)

vm_app = typer.Typer(help="Create, run and inspect VMs.", no_args_is_help=True)


@vm_app.command("create")
def vm_create(
    name: str,
    subsystem: Annotated[Subsystem, typer.Option(help="What the VM is for.")],
    memory: Annotated[int | None, typer.Option(help="RAM in MiB.")] = None,
    vcpus: Annotated[int | None, typer.Option(help="Virtual CPUs.")] = None,
    image: Annotated[str | None, typer.Option(help="Image hash prefix (default: current).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the agent answers.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a VM from the base image and boot it."""
    record, timings = service().create(name, subsystem, memory, vcpus, image, wait, Clock())
    if as_json:
        emit_json({**vm_dict(record), "timings": timings})
    else:
        out.print(f"VM '{name}' is {record.state.value} "
                  f"(ssh 127.0.0.1:{record.ssh_port}, agent 127.0.0.1:{record.agent_port})")


@vm_app.command("list")
def vm_list(as_json: JsonFlag = False) -> None:
    """List VMs and their live state."""
    records = service().list_vms()
    if as_json:
        emit_json([vm_dict(r) for r in records])
        return
    table = Table("NAME", "SUBSYSTEM", "STATE", "MEMORY", "VCPUS", "SSH", "AGENT", "ACCEL")
    for r in records:
        table.add_row(r.name, r.subsystem.value, r.state.value, f"{r.memory_mib} MiB",
                      str(r.vcpus), str(r.ssh_port), str(r.agent_port), r.accel)
    out.print(table if records else "no VMs yet: try 'somnus vm create chat --subsystem chat'")


@vm_app.command("start")
def vm_start(
    name: str,
    wait: Annotated[bool, typer.Option(help="Wait until the agent answers.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Boot a stopped VM."""
    timings = service().start(name, wait, Clock())
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
    clean = service().stop(name, force)
    out.print(f"VM '{name}' stopped" + ("" if clean else " (powered off)"))


@vm_app.command("delete")
def vm_delete(name: str) -> None:
    """Delete a VM: its domain, disk, seed and record."""
    service().delete(name)
    out.print(f"VM '{name}' deleted")


@vm_app.command("ssh", context_settings={"allow_extra_args": True,
                                         "ignore_unknown_options": True})
def vm_ssh(ctx: typer.Context, name: str) -> None:
    """Open a shell in the VM, or run a command: somnus vm ssh NAME -- COMMAND."""
    argv = service().ssh_argv(name, list(ctx.args) or None)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@vm_app.command("console")
def vm_console(
    name: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Last N lines.")] = 50,
) -> None:
    """Show the VM's serial console log."""
    path = service().console_log(name)
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
    data = info_dict(service().info(name))
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False, box=None)
    for key in ("name", "subsystem", "state", "memory_mib", "vcpus", "accel", "ssh_port",
                "agent_port", "image_hash", "created_at", "last_error"):
        table.add_row(key, str(data[key]))
    for key, value in data["paths"].items():
        table.add_row(key, value)
    agent = data["agent"]
    if agent:
        table.add_row("guest kernel", agent["kernel"])
        table.add_row("models", ", ".join(m["name"] for m in agent["models"]) or "none")
    table.add_row("history", " -> ".join(h["to_state"] for h in data["history"]))
    out.print(table)
