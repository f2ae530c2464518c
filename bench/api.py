"""REST API throughput: requests/s and p50/p99 of ``GET /vms`` and ``GET /status``.

A child process serves the real app (uvicorn, one worker, loopback) over a Somnus
home with 50 VM records whose domains live on libvirt's ``test:///default`` driver
(30 running, 10 paused, 10 stopped), so every request really reconciles with
libvirt, reads SQLite and measures the budget. The parent drives a bounded load
with an async httpx client (a request count and a time limit per endpoint).
Prints one JSON line. Usage: python -m bench.api [--requests 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.swap import percentile

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
    from orchestrator.hypervisor import Hypervisor
    from orchestrator.models import VMRecord, VMState
    from orchestrator.host import Host

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
    import uvicorn

    from api import create_app

    host = populate(home)
    app = create_app(host=host, api_host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1",
                port=port, log_level="warning", access_log=False)


async def load(base: str, token: str, path: str, count: int, concurrency: int,
               limit_s: float) -> dict[str, Any]:
    """``count`` GETs of ``path`` from ``concurrency`` workers, stopping at ``limit_s``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + limit_s
    remaining = count
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(min(20, count)):  # warm-up: connections, caches
            await client.get(path)

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                started = time.perf_counter()
                response = await client.get(path)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2)}


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
    parser.add_argument("--requests", type=int, default=1000, help="per endpoint")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="time limit per endpoint")
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
            listing = httpx.get(base + "/vms", headers={"Authorization": f"Bearer {token}"},
                                timeout=30).json()
            assert listing["total"] == VM_COUNT, listing
            results = {path: asyncio.run(load(base, token, path, args.requests,
                                              args.concurrency, args.seconds))
                       for path in ENDPOINTS}
        finally:
            child.terminate()
            child.wait(timeout=30)
    print(json.dumps({"bench": "api", "vms": VM_COUNT, "counts": listing["counts"],
                      "concurrency": args.concurrency, "server": "uvicorn, 1 worker",
                      "endpoints": results}))


if __name__ == "__main__":
    main()
