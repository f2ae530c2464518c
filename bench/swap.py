"""Foreground-switch latency: our swap paths against the naive one, in one run.

Ours: pause the current VM, resume the target whose RAM was paged out to its file,
return when its agent answers (the previous VM is paged out afterwards, off the
user's path). Also timed: a target in the managed-save tier (restored), a paused
target whose RAM stayed (budget policy), and the naive path: managed save of the
current VM, then start the target, then its agent. Prints one JSON line: p50/p95 of
each, the naive/ours ratio, a background VM's QEMU RSS and RAM file on disk, peak
host RSS, saved-state size. Usage: python -m bench.swap [--rounds 8] [--memory 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

import psutil

from bench.vmhome import log, scratch_host
from core.config import SwapPolicy
from guest_agent.protocol import Subsystem
from orchestrator import eviction
from orchestrator.budget import qemu_rss_mib
from orchestrator.swap import SwapEngine, Tier
from orchestrator.views import ActivateView
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


def background_figures(service: VMService, name: str) -> dict[str, float | None]:
    """A VM out of the foreground: its QEMU's RSS and its RAM file's blocks on disk."""
    domain = service.domain_name(name)
    pid = service.hv.qemu_pid(domain)
    mappings = eviction.ram_mappings(pid) if pid is not None else []
    on_disk = (mappings[0].path.stat().st_blocks * 512 / 2**20) if mappings else None
    return {"qemu_rss_mib": qemu_rss_mib(service.hv, domain) if pid is not None else None,
            "ram_file_on_disk_mib": round(on_disk, 1) if on_disk is not None else None}


def switch_series(engine: SwapEngine, rounds: int, label: str,
                  before: Callable[[str], None] = lambda _name: None) -> list[ActivateView]:
    """``rounds`` activations alternating between the two VMs; ``before`` readies the target."""
    results = []
    for i in range(rounds):
        target = NAMES[i % 2]
        before(target)
        results.append(engine.activate(target))
        log(f"{label} -> {target}: {results[-1].path} {results[-1].seconds:.3f}s "
            f"{results[-1].timings}")
    return results


def p50_p95(results: list[ActivateView], path: str) -> tuple[float | None, float | None]:
    seconds = [r.seconds for r in results if r.path == path]
    if not seconds:
        return None, None
    return percentile(seconds, 0.5), percentile(seconds, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args()

    with scratch_host() as host:
        service, engine = host.vms, host.swap
        # Each create makes its VM the foreground (single-active): the other steps back.
        for name in NAMES:
            service.create(name, Subsystem.CHAT, memory_mib=args.memory, progress=log)
        engine.activate(NAMES[0])
        engine.activate(NAMES[1])  # both have stepped back once
        with PeakRSS(service) as peak:
            # Ours, default tier: the previous VM paused and its RAM paged out to its file.
            ours = switch_series(engine, args.rounds, "ours")
            background = background_figures(service, NAMES[0])
            # The managed-save tier (budget pressure, or RAM not in a file).
            saved = switch_series(engine, args.rounds, "saved", lambda target: engine.demote(
                service.store.get_vm(target), Tier.SAVED))
            naive: list[float] = []
            current = service.store.foreground()
            for name in NAMES:  # the naive path starts from a saved target
                if name != current:
                    engine.demote(service.store.get_vm(name), Tier.SAVED)
            for i in range(args.rounds):
                target = NAMES[i % 2]
                if current is None or current == target:
                    continue
                naive.append(naive_switch(service, engine, current, target))
                current = target
                log(f"naive -> {target}: {naive[-1]:.3f}s")
            save_sizes = [service.hv.managed_save_path(service.domain_name(n)).stat().st_size
                          for n in NAMES if service.hv.has_managed_save(service.domain_name(n))]
            # The paused tier (budget policy with room): the destination's RAM never left.
            service.settings.policy = SwapPolicy.BUDGET
            service.settings.memory_budget_mib = 8192
            paused = switch_series(engine, args.rounds + 2, "paused")
        ours_p50, ours_p95 = p50_p95(ours, "paged-in")
        saved_p50, saved_p95 = p50_p95(saved, "restored")
        paused_p50, paused_p95 = p50_p95(paused, "resumed")
        figures = {
            "bench": "swap",
            "accel": service.store.get_vm(NAMES[0]).accel,
            "guest_memory_mib": args.memory,
            "rounds": args.rounds,
            "ours_paged_in_p50_s": ours_p50,
            "ours_paged_in_p95_s": ours_p95,
            "saved_dest_p50_s": saved_p50,
            "saved_dest_p95_s": saved_p95,
            "paused_dest_p50_s": paused_p50,
            "paused_dest_p95_s": paused_p95,
            "naive_p50_s": percentile(naive, 0.5),
            "naive_p95_s": percentile(naive, 0.95),
            "naive_over_ours_p50": round(statistics.median(naive) / ours_p50, 2)
            if ours_p50 else None,
            "ours_phase_p50_s": {k: round(statistics.median(r.timings[k] for r in ours), 3)
                                 for k in ours[0].timings},
            "background_vm": background,
            "peak_host_rss_mib": peak.peak_mib,
            "saved_state_mib_per_guest_gib": round(
                statistics.mean(save_sizes) / 2**20 / (args.memory / 1024), 1)
            if save_sizes else None,
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
