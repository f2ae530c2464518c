"""The ``somnus`` command line (typer + rich).

Progress goes to stderr, results to stdout; ``--json`` prints one JSON document
for scripts. Every Somnus error becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from guest_agent.protocol import Subsystem
from images import builder, catalog
from orchestrator.config import Settings, load_settings
from orchestrator.errors import SomnusError
from orchestrator.models import VMRecord
from orchestrator.vms import VMInfo, VMService

app = typer.Typer(help="Somnus: a local-first AI workstation where every subsystem is a VM.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
image_app = typer.Typer(help="Build and list guest images.", no_args_is_help=True)
vm_app = typer.Typer(help="Create, run and inspect VMs.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")

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


# -- images --------------------------------------------------------------------------------


@image_app.command("build")
def image_build(
    force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Build the base guest image from Debian packages (cached by recipe hash)."""
    manifest = builder.build_image(settings(), progress=Clock(), force=force)
    if as_json:
        emit_json(manifest.model_dump(mode="json"))
    else:
        out.print(f"image {manifest.recipe_hash[:16]} ready: {manifest.disk} "
                  f"({manifest.disk_bytes / 2**20:.0f} MiB)")


@image_app.command("list")
def image_list(as_json: JsonFlag = False) -> None:
    """List built images with size, recipe hash and date."""
    images = catalog.list_images(settings())
    if as_json:
        emit_json([m.model_dump(mode="json") for m in images])
        return
    table = Table("HASH", "NAME", "SIZE", "CREATED", "BUILD")
    for m in images:
        table.add_row(m.recipe_hash[:16], m.name, f"{m.disk_bytes / 2**20:.0f} MiB",
                      m.created_at.strftime("%Y-%m-%d %H:%M"), f"{m.build_seconds:.0f}s")
    out.print(table if images else "no images yet: run 'somnus image build'")


# -- VMs -----------------------------------------------------------------------------------


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


def info_dict(info: VMInfo) -> dict[str, Any]:
    return {
        **vm_dict(info.record),
        "paths": {"disk": str(info.paths.overlay), "seed": str(info.paths.seed),
                  "serial_log": str(info.paths.serial_log)},
        "history": [h.model_dump(mode="json", exclude={"id"}) for h in info.history],
        "agent": info.agent.model_dump(mode="json") if info.agent else None,
    }


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


# -- demo ----------------------------------------------------------------------------------


@app.command()
def demo(
    name: Annotated[str, typer.Option(help="Name of the chat VM.")] = "chat",
    as_json: JsonFlag = False,
) -> None:
    """Build the image, bring up the chat VM and show what runs inside it."""
    clock = Clock()
    report: dict[str, Any] = {"timings": {}}
    started = time.monotonic()
    manifest = builder.build_image(settings(), progress=clock)
    report["timings"]["image"] = round(time.monotonic() - started, 2)
    report["image"] = manifest.recipe_hash[:16]
    svc = service()
    record = svc.store.find_vm(name)
    if record is None:
        clock(f"creating VM '{name}'")
        _record, timings = svc.create(name, Subsystem.CHAT, progress=clock)
    elif not svc.hv.is_running(record.domain_name):
        clock(f"starting VM '{name}'")
        timings = svc.start(name, progress=clock)
    else:
        timings = svc.wait_ready(name, progress=clock)
    report["timings"].update(timings)
    info = svc.info(name)
    uname = svc.run(name, "uname -sr").stdout.strip()
    health = svc.agent(info.record).health()
    report.update(vm=info_dict(info), guest_kernel=uname, agent_health=health.model_dump())
    if as_json:
        emit_json(report)
        return
    out.print(f"[bold]VM '{name}'[/bold] ({info.record.accel}, {info.record.memory_mib} MiB) "
              f"is running")
    out.print(f"  guest kernel : {uname}")
    out.print(f"  agent health : {health.status.value}, agent {health.agent_version}")
    if info.agent:
        models = ", ".join(f"{m.name} ({m.size_bytes / 2**20:.0f} MiB)" for m in info.agent.models)
        out.print(f"  models       : {models}")
        out.print(f"  packages     : {info.agent.packages}")
    out.print("  timings (s)  : " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()))
    out.print(f"  try          : somnus vm ssh {name} -- uptime")


def main() -> None:
    """Entry point: run the CLI, turning Somnus errors into one line and an exit code."""
    try:
        app()
    except SomnusError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
