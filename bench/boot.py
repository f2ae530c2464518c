"""Time from ``vm create`` to agent-ready, cold and from a template; one JSON line.

The first VM of a shape boots cold from the image and is saved as the template of its
shape; the next ones start from that template (``orchestrator.templates``). Runs in a
Somnus home of its own (the image cache is shared) and deletes its VMs.
Usage: python -m bench.boot [--memory MiB] [--vcpus N] [--clones N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.vmhome import log, scratch_host
from guest_agent.protocol import Subsystem
from orchestrator.vms import VMService

# The stages of a create from a template up to the moment its agent answers.
UNTIL_AGENT = ("provision", "restore from template", "identity", "domain running", "agent")


def guest_blame(service: VMService, name: str) -> dict[str, object]:
    """What dominated the guest's boot, from the guest's own tools."""
    analyze = service.run(name, "systemd-analyze 2>/dev/null | head -1").stdout.strip()
    blame = service.run(name, "systemd-analyze blame 2>/dev/null | head -5").stdout
    ci = service.run(name, "cloud-init analyze blame 2>/dev/null | sed -n '2,6p'").stdout
    return {
        "systemd_analyze": analyze,
        "systemd_blame_top5": [" ".join(line.split()) for line in blame.splitlines()],
        "cloud_init_blame_top5": [" ".join(line.split()) for line in ci.splitlines()],
    }


def clone_figures(service: VMService, count: int, memory: int, vcpus: int) -> dict[str, object]:
    """Create ``count`` VMs from the template one after another (each deleted after)."""
    agent_s, ready_s, model_s, runs = [], [], [], []
    for index in range(count):
        name = f"clone-{index}"
        started = time.monotonic()
        record, stages = service.create(name, Subsystem.CHAT, memory, vcpus, progress=log)
        ready_s.append(time.monotonic() - started)
        if "restore from template" not in stages:
            raise SystemExit(f"{name} did not start from the template: {stages}")
        agent_s.append(sum(stages[stage] for stage in UNTIL_AGENT))
        service.agent(record).wait_model(timeout_s=600)
        model_s.append(time.monotonic() - started)
        runs.append(stages)
        service.delete(name)
    return {
        "clones": count,
        "clone_create_to_agent_answering_p50_s": round(statistics.median(agent_s), 2),
        "clone_create_to_ready_p50_s": round(statistics.median(ready_s), 2),
        "clone_create_to_model_ready_p50_s": round(statistics.median(model_s), 2),
        "clone_stages_s": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--clones", type=int, default=3)
    args = parser.parse_args()

    with scratch_host() as host:
        service = host.vms
        started = time.monotonic()
        record, stages = service.create("bench", Subsystem.CHAT, args.memory, args.vcpus,
                                        progress=log)
        agent_ready = time.monotonic() - started - stages.get("template capture", 0.0)
        service.agent(record).wait_model(timeout_s=600)  # /health "ok": model and memory loaded
        figures = {
            "bench": "boot",
            "accel": record.accel,
            "memory_mib": args.memory,
            "vcpus": args.vcpus,
            "stages_s": stages,
            "cold_create_to_agent_ready_s": round(agent_ready, 2),
            "cold_create_to_model_ready_incl_capture_s": round(time.monotonic() - started, 2),
            **guest_blame(service, "bench"),
        }
        service.stop("bench")  # out of the way: the clones are measured alone
        figures.update(clone_figures(service, args.clones, args.memory, args.vcpus))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
