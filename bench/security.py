"""Security monitoring: what it costs and how fast it acts, on a real TCG VM.

Overhead: host CPU time of one monitoring round per monitored VM (libvirt's bulk
statistics every round, the agent's ``GET /security`` every ``guest_interval_s``), and a
round's wall time. Time to action, from the condition starting to the action taken:
a CPU hog in the guest -> warn (its rule's window, 10 s here, is reported apart from the
detection delay on top of it), and an agent-authentication flood -> suspend, timed
from the failure that crosses the rule's threshold (then released for the next
repetition). Prints one JSON line with p50/p95 of each.
Usage: python -m bench.security [--rounds 30] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

from bench.swap import percentile
from bench.vmhome import log, scratch_host
from guest_agent.protocol import Subsystem
from orchestrator.host import Host
from orchestrator.security.monitor import SecurityMonitor
from orchestrator.security.policy import DEFAULT_RULES, Action, Metric, Policy, Rule

VM = "bench-sec"
INTERVAL_S = 1.0
HOG = Rule(name="cpu-hog", metric=Metric.CPU_PERCENT, above=80, for_s=10, clear_below=50,
           action=Action.WARN)
POLICY = Policy(interval_s=INTERVAL_S, guest_interval_s=2 * INTERVAL_S,
                rules=[HOG, *(r for r in DEFAULT_RULES if r.name == "auth-flood")])
START_HOG = ("nohup sh -c 'for i in 1 2; do timeout 60 sh -c \"while :; do :; done\" & done; "
             "wait' >/dev/null 2>&1 &")
STOP_HOG = "pkill -f '[w]hile :; do :; done' || true"
FLOOD = 11  # failed logins: one past the rule's threshold of ten a minute


def until(monitor: SecurityMonitor, rule: str, timeout_s: float = 120) -> float:
    """Sample every interval until ``rule`` fires; the time it fired (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        if any(e.rule == rule for e in monitor.sample().events):
            return time.monotonic()
        time.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))
    raise RuntimeError(f"rule '{rule}' did not fire in {timeout_s} s")


def overhead(monitor: SecurityMonitor, rounds: int) -> dict[str, float]:
    cpu_ms, wall_ms = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        done = monitor.sample()
        wall_ms.append((time.perf_counter() - started) * 1000)
        cpu_ms.append(done.cpu_s * 1000 / max(1, len(done.sampled)))
        time.sleep(INTERVAL_S)
    return {"host_cpu_ms_per_vm_round_p50": percentile(cpu_ms, 0.5),
            "host_cpu_ms_per_vm_round_p95": percentile(cpu_ms, 0.95),
            "host_cpu_percent_per_vm": round(statistics.mean(cpu_ms) / 10 / INTERVAL_S, 3),
            "round_wall_ms_p50": percentile(wall_ms, 0.5),
            "round_wall_ms_p95": percentile(wall_ms, 0.95)}


def cpu_hog_to_warn(host: Host, monitor: SecurityMonitor) -> float:
    monitor.sample()
    started = time.monotonic()
    host.vms.run(VM, START_HOG)
    fired = until(monitor, HOG.name)
    host.vms.run(VM, STOP_HOG)
    while monitor.sample().sampled.get(VM, {}).get(Metric.CPU_PERCENT.value, 100) > 50:
        time.sleep(INTERVAL_S)  # re-armed once the guest is quiet again
    return fired - started


def auth_flood_to_suspend(host: Host) -> float:
    record = host.store.get_vm(VM)
    monitor = new_monitor(host)  # a fresh start: the rule armed, a guest baseline taken
    monitor.sample()
    with httpx.Client(base_url=f"http://127.0.0.1:{record.agent_port}") as client:
        for _ in range(FLOOD):
            client.get("/health", headers={"Authorization": "Bearer " + "x" * 40})
    # The condition starts with the failure past the rule's ten (the flood before it is
    # slowed by the agent's throttle, and is not the monitor's delay).
    started = time.monotonic()
    fired = until(monitor, "auth-flood")
    host.security.release(VM)
    return fired - started


def new_monitor(host: Host) -> SecurityMonitor:
    return SecurityMonitor(host.vms, host.security.store, lambda: POLICY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with scratch_host() as host:
        log("creating the VM")
        host.vms.create(VM, Subsystem.CHAT, memory_mib=1024)
        monitor = new_monitor(host)
        log(f"overhead: {args.rounds} rounds")
        result: dict[str, object] = {"bench": "security", "interval_s": INTERVAL_S,
                                     **overhead(monitor, args.rounds)}
        hog = []
        for i in range(args.repeats):
            hog.append(cpu_hog_to_warn(host, monitor))
            log(f"cpu hog -> warn {i + 1}: {hog[-1]:.1f} s")
        flood = []
        for i in range(args.repeats):
            flood.append(auth_flood_to_suspend(host))
            log(f"auth flood -> suspend {i + 1}: {flood[-1]:.1f} s")
        result.update({
            "cpu_hog_window_s": HOG.for_s,
            "cpu_hog_to_warn_s_p50": percentile(hog, 0.5),
            "cpu_hog_to_warn_s_p95": percentile(hog, 0.95),
            "cpu_hog_detection_beyond_window_s_p50": round(percentile(hog, 0.5) - HOG.for_s, 3),
            "auth_flood_to_suspend_s_p50": percentile(flood, 0.5),
            "auth_flood_to_suspend_s_p95": percentile(flood, 0.95),
        })
        print(json.dumps(result))


if __name__ == "__main__":
    main()
