"""REST API throughput: requests/s and p50/p99 of ``GET /vms`` and ``GET /status``.

A child process serves the real app as ``somnus serve`` does (uvicorn, one worker,
loopback, the live view fed by libvirt's events) over a Somnus home with 50 VM records
whose domains live on libvirt's ``test:///default`` driver (30 running, 10 paused, 10
stopped). The load comes from Debian's ``wrk`` (C, one thread: not the bottleneck),
bounded by a time limit per endpoint; a second run changes a domain behind the
server's back between requests' bursts, so cached answers are shown to follow.
Prints one JSON line. Usage: python -m bench.api [--seconds 10] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

VM_COUNT = 50
ENDPOINTS = ("/vms", "/status")


def bench_settings(home: Path) -> Any:
    from core.config import Settings

    return Settings(home=home, cache=home / "cache", libvirt_uri="test:///default",
                    domain_prefix="bench-", port_range_start=47000, port_range_end=47999)


def populate(home: Path) -> Any:
    """50 VM records inserted through the store, with test-driver domains to match.

    Returns the host: the test driver forgets everything when its last connection
    closes, so the server must use this host's connection.
    """
    from guest_agent.protocol import Subsystem
    from orchestrator import credentials
    from orchestrator.host import Host
    from orchestrator.hypervisor import Hypervisor
    from orchestrator.models import VMRecord, VMState

    settings = bench_settings(home)
    host = Host(settings, hypervisor=Hypervisor(settings.libvirt_uri))
    svc = host.vms
    subsystems = list(Subsystem)
    for i in range(VM_COUNT):
        name = f"vm-{i:02d}"
        state = (VMState.RUNNING if i < 30 else VMState.PAUSED if i < 40 else VMState.STOPPED)
        domain = svc.domain_name(name)
        svc.hv.define(f"<domain type='test'><name>{domain}</name><memory unit='MiB'>256"
                      "</memory><os><type>hvm</type></os></domain>")
        if state is not VMState.STOPPED:
            svc.hv.start(domain)
        if state is VMState.PAUSED:
            svc.hv.pause(domain)
        svc.paths(name).root.mkdir(parents=True)
        credentials.write_private(svc.paths(name).token, credentials.new_token().encode())
        svc.store.add_vm(VMRecord(
            name=name, domain_name=domain, subsystem=subsystems[i % len(subsystems)],
            state=state, memory_mib=256, vcpus=1, accel="tcg", image_hash="bench",
            vm_dir=str(svc.paths(name).root), ssh_port=47000 + 2 * i,
            agent_port=47001 + 2 * i))
    return host


def serve(home: Path, port: int) -> None:
    """The child: populate the test driver (it lives in this process), then serve."""
    from api import create_app
    from api.server import run
    from orchestrator.live import start_event_loop

    start_event_loop()  # before the connection that subscribes to events is opened

    host = populate(home)
    app = create_app(host=host, api_host="127.0.0.1", live=True)
    run(app, host="127.0.0.1", port=port, log_level="warning")


def wrk(url: str, token: str, seconds: float, connections: int) -> dict[str, Any]:
    """One bounded ``wrk`` run against ``url``: requests/s, p50/p99 latency, errors."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench.api needs wrk: apt-get install wrk")
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True)
    text = result.stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if match is None:
            raise SystemExit(f"wrk printed no {label}% latency:\n{text}")
        value, unit = float(match.group(1)), match.group(2)
        return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_ms": ms("50"),
            "p99_ms": ms("99"), "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_healthy(base: str, child: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"the API server exited ({child.returncode})")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the API server did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="per endpoint")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--serve", nargs=2, metavar=("HOME", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return
    from api.auth import ensure_token

    with tempfile.TemporaryDirectory(prefix="somnus-bench-api-") as tmp:
        home, port = Path(tmp), free_port()
        base = f"http://127.0.0.1:{port}"
        token = ensure_token(bench_settings(home))
        child = subprocess.Popen([sys.executable, "-m", "bench.api", "--serve", tmp, str(port)],
                                 env=os.environ.copy())
        try:
            wait_healthy(base, child)
            auth = {"Authorization": f"Bearer {token}"}
            listing = httpx.get(base + "/vms", headers=auth, timeout=30).json()
            assert listing["total"] == VM_COUNT, listing
            results = {path: wrk(base + path, token, args.seconds, args.connections)
                       for path in ENDPOINTS}
        finally:
            child.terminate()
            child.wait(timeout=30)
    print(json.dumps({"bench": "api", "vms": VM_COUNT, "counts": listing["counts"],
                      "connections": args.connections, "load": "wrk, 1 thread",
                      "server": "uvicorn, 1 worker, live view", "endpoints": results}))


if __name__ == "__main__":
    main()
