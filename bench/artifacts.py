"""What the artifacts sandbox costs and how fast it stops a misbehaving run; one JSON line.

* sandbox overhead per language: the run phase of Hello World in the sandbox (as the
  agent times it) minus the same program run bare in the same VM (over SSH, timed
  inside the VM), p50 and p95;
* runs per minute, Hello World in Python back to back, end to end from the host;
* limit-to-kill: how long after its limit a run is stopped (wall time, CPU time);
* the agent's ``/health`` latency while a fork bomb and a memory hog run.

Runs in a Somnus home of its own (the image cache is shared) and deletes its VM.
Usage: python -m bench.artifacts [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import threading
import time

from bench.vmhome import log, scratch_host
from guest_agent.protocol import Subsystem
from guest_agent.protocol.runs import Language, RunEventKind, RunResult, SourceFile
from images.builder import build_image
from images.recipe import Flavour
from orchestrator.agent_client import AgentClient
from orchestrator.artifacts.service import ArtifactService
from orchestrator.vms import VMService

VM = "artifacts"
HELLO: dict[Language, tuple[str, str, str]] = {
    # file, code, the bare command (run in the file's folder; compiled ones built first)
    Language.PYTHON: ("main.py", 'print("hello")\n', "python3 main.py"),
    Language.JAVASCRIPT: ("main.js", 'console.log("hello")\n', "node main.js"),
    Language.BASH: ("main.sh", "echo hello\n", "bash main.sh"),
    Language.C: ("main.c", '#include <stdio.h>\nint main(void) { puts("hello"); }\n',
                 "gcc -O1 -o prog main.c && ./prog"),
    Language.CPP: ("main.cpp", '#include <iostream>\nint main() { std::cout << "hello\\n"; }\n',
                   "g++ -O1 -o prog main.cpp && ./prog"),
    Language.RUST: ("main.rs", 'fn main() { println!("hello"); }\n',
                    "rustc -o prog main.rs && ./prog"),
    Language.GO: ("main.go", 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }\n',
                  "GOCACHE=/tmp/gocache GO111MODULE=off go build -o prog main.go && ./prog"),
}  # fmt: skip
# Times the bare program N times inside the VM (after building it once), in seconds.
BARE_TIMER = """
import subprocess, sys, time
build, run, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if build:
    subprocess.run(build, shell=True, check=True, capture_output=True)
times = []
for _ in range(n):
    t = time.perf_counter()
    subprocess.run(run, shell=True, check=True, capture_output=True)
    times.append(time.perf_counter() - t)
print(" ".join(f"{x:.4f}" for x in times))
"""


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def _result(svc: ArtifactService, name: str, **limits: object) -> RunResult:
    result = None
    for event in svc.run(name, limits=limits):
        if event.kind is RunEventKind.RESULT:
            result = event.result
    assert result is not None
    return result


def bare_seconds(service: VMService, language: Language, repeat: int) -> list[float]:
    path, code, command = HELLO[language]
    build, _, run = command.rpartition(" && ")
    folder = f"/tmp/bare-{language}"
    script = (f"mkdir -p {folder} && cd {folder} && printf %s {shlex.quote(code)} > {path} && "
              f"python3 -c {shlex.quote(BARE_TIMER)} {shlex.quote(build)} {shlex.quote(run)} "
              f"{repeat}")  # fmt: skip
    done = service.run(VM, script)
    return [float(x) for x in done.stdout.split()]


def overhead(svc: ArtifactService, service: VMService, repeat: int) -> dict[str, object]:
    figures: dict[str, object] = {}
    for language, (path, code, _) in HELLO.items():
        name = f"hello-{language}"
        svc.create(name, language, [SourceFile(path=path, content=code)])
        sandboxed = [_result(svc, name).duration_s for _ in range(repeat)]
        bare = bare_seconds(service, language, repeat)
        diffs = [s - statistics.median(bare) for s in sandboxed]
        figures[str(language)] = {"sandboxed_p50_s": _p(sandboxed, 0.5),
                                  "bare_p50_s": _p(bare, 0.5),
                                  "overhead_p50_s": _p(diffs, 0.5),
                                  "overhead_p95_s": _p(diffs, 0.95)}  # fmt: skip
        log(f"{language}: {figures[str(language)]}")
    return figures


def runs_per_minute(svc: ArtifactService, seconds: float = 60.0) -> float:
    started, done = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        _result(svc, "hello-python")
        done += 1
    return round(done * 60 / (time.monotonic() - started), 1)


def limit_to_kill(svc: ArtifactService, repeat: int) -> dict[str, float]:
    svc.create("spin", Language.PYTHON, [SourceFile(path="main.py",
                                                    content="while True:\n    pass\n")])
    wall = [_result(svc, "spin", wall_s=2).duration_s - 2 for _ in range(repeat)]
    # One busy thread: its CPU time grows as fast as wall time, so the CPU it used past
    # the limit is the time from crossing the limit to being killed.
    cpu = [_result(svc, "spin", cpu_s=1, wall_s=60).cpu_s - 1 for _ in range(repeat)]
    return {"wall_time_p50_s": _p(wall, 0.5), "wall_time_max_s": round(max(wall), 3),
            "cpu_time_p50_s": _p(cpu, 0.5), "cpu_time_max_s": round(max(cpu), 3)}


def _probe(agent: AgentClient, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        agent.health(timeout_s=30)
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)


def health_under_stress(svc: ArtifactService, service: VMService) -> dict[str, object]:
    agent = service.agent(service.store.get_vm(VM))
    figures: dict[str, object] = {}
    programs = {
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n"
                     "    except OSError:\n        pass\n",
        "memory_hog": "import time\nchunks = []\nwhile True:\n"
                      "    chunks.append(bytearray(8 * 2**20))\n",
    }  # fmt: skip
    for name, code in programs.items():
        svc.create(name, Language.PYTHON, [SourceFile(path="main.py", content=code)])
        latencies: list[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=_probe, args=(agent, stop, latencies))
        thread.start()
        result = _result(svc, name, memory_mib=512, wall_s=20)
        stop.set()
        thread.join()
        figures[name] = {"limit": result.limit, "run_s": result.duration_s,
                         "health_p50_ms": round(_p(latencies, 0.5) * 1000),
                         "health_p99_ms": round(_p(latencies, 0.99) * 1000),
                         "health_max_ms": round(max(latencies) * 1000), "probes": len(latencies)}
        log(f"{name}: {figures[name]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with scratch_host() as host:
        build_image(host.settings, progress=log, flavour=Flavour.ARTIFACTS)
        host.vms.create(VM, Subsystem.ARTIFACTS, memory_mib=1024, progress=log)
        svc = host.artifacts
        report: dict[str, object] = {"bench": "artifacts", "accel": host.store.get_vm(VM).accel,
                                     "repeat": args.repeat}  # fmt: skip
        report["overhead"] = overhead(svc, host.vms, args.repeat)
        report["runs_per_minute_python_hello"] = runs_per_minute(svc)
        report["limit_to_kill"] = limit_to_kill(svc, args.repeat)
        report["health_under_stress"] = health_under_stress(svc, host.vms)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
