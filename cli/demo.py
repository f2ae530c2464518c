"""``somnus demo``: the README's first command ends here."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cli.common import Clock, JsonFlag, emit_json, host, out, settings
from guest_agent.protocol import Subsystem
from images import builder
from orchestrator import views


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
    svc = host().vms
    record = svc.store.find_vm(name)
    if record is None:
        clock(f"creating VM '{name}'")
        _record, timings = svc.create(name, Subsystem.CHAT, progress=clock)
    elif not svc.hv.is_running(record.domain_name):
        clock(f"starting VM '{name}'")
        timings = svc.start(name, progress=clock)
    else:
        timings = svc.wait_ready(record, progress=clock)
    report["timings"].update(timings)
    info = svc.info(name)
    uname = svc.run(name, "uname -sr").stdout.strip()
    started = time.monotonic()
    health = svc.agent(info.record).wait_model()
    clock(f"model: {health.status.value}")
    report["timings"]["model"] = round(time.monotonic() - started, 2)
    report.update(vm=views.vm_detail(svc, name).model_dump(mode="json"), guest_kernel=uname,
                  agent_health=health.model_dump())
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
