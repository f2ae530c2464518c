"""Foreground-switch latency: our swap path against the naive one, in one run.

Ours: pause the current VM, restore the target from its managed save, return when
its agent answers (the previous VM is saved afterwards, off the user's path).
Naive: managed save of the current VM, then start the target, then its agent.
Prints one JSON line: p50/p95 of both, their ratio, peak host RSS, saved-state
size per GiB of guest RAM. Usage: python -m bench.swap [--rounds 8] [--memory 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import psutil

from bench.vmhome import log, scratch_host
from core.config import SwapPolicy
from guest_agent.protocol import Subsystem
from orchestrator.budget import qemu_rss_mib
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService

NAMES = ("bench-a", "bench-b")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class PeakRSS:
    """Samples the host RSS of our QEMU processes plus this process."""

    def __init__(self, service: VMService) -> None:
        self.service = service
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss // 2**20 + sum(
                qemu_rss_mib(self.service.hv, self.service.domain_name(n)) for n in NAMES
                if self.service.hv.is_active(self.service.domain_name(n)))
            self.peak_mib = max(self.peak_mib, total)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def naive_switch(service: VMService, engine: SwapEngine, source: str, target: str) -> float:
    started = time.monotonic()
    service.lifecycle.save(service.store.get_vm(source), "bench: naive switch")
    service.lifecycle.restore(service.store.get_vm(target), "bench: naive switch")
    engine._wait_agent(service.store.get_vm(target), timeout_s=120)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args()

    with scratch_host() as host:
        service, engine = host.vms, host.swap
        # Each create makes its VM the foreground (single-active): the other is saved.
        for name in NAMES:
            service.create(name, Subsystem.CHAT, memory_mib=args.memory, progress=log)
        engine.activate(NAMES[0])
        engine.activate(NAMES[1])  # both have been saved once
        ours: list[float] = []
        phases: list[dict[str, float]] = []
        naive: list[float] = []
        with PeakRSS(service) as peak:
            for i in range(args.rounds):
                target = NAMES[i % 2]
                result = engine.activate(target)
                ours.append(result.seconds)
                phases.append(result.timings)
                log(f"ours  -> {target}: {result.path} {result.seconds:.3f}s")
            current = service.store.foreground()
            for i in range(args.rounds):
                target = NAMES[i % 2]
                if current is None or current == target:
                    continue
                naive.append(naive_switch(service, engine, current, target))
                current = target
                log(f"naive -> {target}: {naive[-1]:.3f}s")
            save_sizes = [service.hv.managed_save_path(service.domain_name(n)).stat().st_size
                          for n in NAMES if service.hv.has_managed_save(service.domain_name(n))]
            # The paused tier (budget policy): the destination's RAM never left.
            service.settings.policy = SwapPolicy.BUDGET
            service.settings.memory_budget_mib = 8192
            resumed: list[float] = []
            for i in range(args.rounds + 2):
                result = engine.activate(NAMES[i % 2])
                if result.path == "resumed":
                    resumed.append(result.seconds)
                log(f"paused -> {NAMES[i % 2]}: {result.path} {result.seconds:.3f}s")
        figures = {
            "bench": "swap",
            "accel": service.store.get_vm(NAMES[0]).accel,
            "guest_memory_mib": args.memory,
            "rounds": args.rounds,
            "ours_p50_s": percentile(ours, 0.5),
            "ours_p95_s": percentile(ours, 0.95),
            "paused_dest_p50_s": percentile(resumed, 0.5),
            "paused_dest_p95_s": percentile(resumed, 0.95),
            "naive_p50_s": percentile(naive, 0.5),
            "naive_p95_s": percentile(naive, 0.95),
            "naive_over_ours_p50": round(statistics.median(naive) / statistics.median(ours), 2),
            "ours_phase_p50_s": {k: round(statistics.median(p[k] for p in phases), 3)
                                 for k in phases[0]},
            "peak_host_rss_mib": peak.peak_mib,
            "saved_state_mib_per_guest_gib": round(
                statistics.mean(save_sizes) / 2**20 / (args.memory / 1024), 1)
            if save_sizes else None,
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
