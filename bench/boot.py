"""Time from ``vm create`` to agent-ready, per stage; prints one JSON line.

Runs in a Somnus home of its own (the image cache is shared) and deletes its VM.
Usage: python -m bench.boot [--memory MiB] [--vcpus N]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.vmhome import log, scratch_host
from guest_agent.protocol import Subsystem
from orchestrator.vms import VMService


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--vcpus", type=int, default=2)
    args = parser.parse_args()

    with scratch_host() as host:
        service = host.vms
        started = time.monotonic()
        record, stages = service.create("bench", Subsystem.CHAT, args.memory, args.vcpus,
                                        progress=log)
        agent_ready = time.monotonic() - started
        service.agent(record).wait_model(timeout_s=600)  # /health "ok": model and memory loaded
        figures = {
            "bench": "boot",
            "accel": record.accel,
            "memory_mib": args.memory,
            "vcpus": args.vcpus,
            "stages_s": stages,
            "create_to_agent_ready_s": round(agent_ready, 2),
            "create_to_model_ready_s": round(time.monotonic() - started, 2),
            **guest_blame(service, "bench"),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
