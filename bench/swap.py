"""Foreground-switch latency: our swap paths against the naive one, in one run.

Ours (single-active, the default): pause the current VM, bring the target back from its
save in place (a QEMU waiting with the RAM file mapped loads ~1 MiB of device state),
return when its agent answers and its clock is set; the previous VM is saved in place
afterwards, off the user's path. Also timed: a paged-out target (paused, its RAM file
paged out: budget pressure), a paused target whose RAM stayed (budget policy with room),
and the naive path: libvirt's managed save of the current VM, then start the target
from its managed save, then its agent. Prints one JSON line: p50/p95 of each, the
naive/ours ratio, a saved VM's waiting QEMU RSS and its state on disk (device state +
RAM file, and the managed save for comparison), peak host RSS.
Usage: python -m bench.swap [--rounds 8] [--memory 1024]
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
    service.lifecycle.save(service.store.get_vm(source), "bench: naive", in_place=False)
    service.lifecycle.restore(service.store.get_vm(target), "bench: naive")
    engine._wait_agent(service.store.get_vm(target), timeout_s=120)
    return time.monotonic() - started


def managed_saved(service: VMService, name: str) -> None:
    """``name`` (saved in place) back in RAM by hand, then saved libvirt's way."""
    service.lifecycle.restore(service.store.get_vm(name), "bench: to a managed save")
    service.lifecycle.pause(service.store.get_vm(name), "bench: to a managed save")
    service.lifecycle.save(service.store.get_vm(name), "bench: naive", in_place=False)


def saved_figures(service: VMService, name: str) -> dict[str, float | None]:
    """A VM saved in place: its waiting QEMU's RSS, its device state and RAM file on disk."""
    domain, paths = service.domain_name(name), service.paths(name)
    on_disk = paths.ram.stat().st_blocks * 512 / 2**20 if paths.ram.exists() else None
    state = paths.device_state.stat().st_size / 2**20 if paths.device_state.exists() else None
    pid = service.hv.qemu_pid(domain) if service.hv.is_active(domain) else None
    # RSS counts QEMU's binary and libraries, which every QEMU shares; USS is what
    # this one alone holds (freed when it exits), PSS its fair share of the rest.
    full = psutil.Process(pid).memory_full_info() if pid is not None else None
    return {"waiting_qemu_rss_mib": qemu_rss_mib(service.hv, domain) if pid else None,
            "waiting_qemu_uss_mib": full.uss >> 20 if full else None,
            "waiting_qemu_pss_mib": full.pss >> 20 if full else None,
            "device_state_mib": round(state, 2) if state is not None else None,
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
        service, engine, settings = host.vms, host.swap, host.vms.settings
        # Each create makes its VM the foreground (single-active): the other steps back.
        for name in NAMES:
            service.create(name, Subsystem.CHAT, memory_mib=args.memory, progress=log)
        engine.activate(NAMES[0])
        engine.activate(NAMES[1])  # both have stepped back once
        with PeakRSS(service) as peak:
            # Ours, the default: the previous VM saved in place.
            ours = switch_series(engine, args.rounds, "ours")
            saved = saved_figures(service, NAMES[0])
            # Budget policy with room: the previous VM stays paused...
            settings.policy, settings.memory_budget_mib = SwapPolicy.BUDGET, 8192
            engine.activate(NAMES[0])
            paused = switch_series(engine, args.rounds, "paused")
            # ...or, under pressure, is paged out first.
            paged = switch_series(engine, args.rounds, "paged-out", lambda target: engine.demote(
                service.store.get_vm(target), Tier.EVICTED))
            # The naive path: managed save of the current VM, then start the target.
            current = service.store.foreground()
            other = next(n for n in NAMES if n != current)
            engine.demote(service.store.get_vm(other), Tier.SAVED)  # in place
            managed_saved(service, other)
            managed_mib = service.hv.managed_save_path(
                service.domain_name(other)).stat().st_size / 2**20
            naive: list[float] = []
            for _ in range(args.rounds):
                assert current is not None
                target = next(n for n in NAMES if n != current)
                naive.append(naive_switch(service, engine, current, target))
                current = target
                log(f"naive -> {target}: {naive[-1]:.3f}s")
        ours_p50, ours_p95 = p50_p95(ours, "restored")
        paged_p50, paged_p95 = p50_p95(paged, "paged-in")
        paused_p50, paused_p95 = p50_p95(paused, "resumed")
        gib = args.memory / 1024
        figures = {
            "bench": "swap",
            "accel": service.store.get_vm(NAMES[0]).accel,
            "guest_memory_mib": args.memory,
            "rounds": args.rounds,
            "ours_saved_in_place_p50_s": ours_p50,
            "ours_saved_in_place_p95_s": ours_p95,
            "paged_out_dest_p50_s": paged_p50,
            "paged_out_dest_p95_s": paged_p95,
            "paused_dest_p50_s": paused_p50,
            "paused_dest_p95_s": paused_p95,
            "naive_p50_s": percentile(naive, 0.5),
            "naive_p95_s": percentile(naive, 0.95),
            "naive_over_ours_p50": round(statistics.median(naive) / ours_p50, 2)
            if ours_p50 else None,
            "ours_phase_p50_s": {k: round(statistics.median(r.timings[k] for r in ours), 3)
                                 for k in ours[0].timings},
            "saved_vm": saved,
            "saved_in_place_share_of_ram": round(
                ((saved["device_state_mib"] or 0) + (saved["ram_file_on_disk_mib"] or 0))
                / args.memory, 3),
            "managed_save_mib_per_guest_gib": round(managed_mib / gib, 1),
            "peak_host_rss_mib": peak.peak_mib,
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
