"""Memory as the host sees it: resident QEMU processes against the RAM budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil

from core.config import Settings
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import VMRecord

MIB = 1024 * 1024


def qemu_rss_mib(hv: Hypervisor, domain_name: str) -> int:
    """Resident memory of the domain's QEMU process (psutil; libvirt's stats as fallback)."""
    pid = hv.qemu_pid(domain_name)
    if pid is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss // MIB)
        except psutil.Error:
            pass
    return hv.memory_stats(domain_name).get("rss", 0) // 1024


def projected_mib(record: VMRecord, settings: Settings) -> int:
    """What a VM may take once it runs: its RAM plus QEMU's own overhead."""
    return record.memory_mib + settings.qemu_overhead_mib


@dataclass(frozen=True)
class BudgetView:
    limit_mib: int
    resident_mib: dict[str, int]  # VM name -> RSS of its QEMU process

    @property
    def used_mib(self) -> int:
        return sum(self.resident_mib.values())

    def fits(self, extra_mib: int) -> bool:
        return self.used_mib + extra_mib <= self.limit_mib


def measure(hv: Hypervisor, records: list[VMRecord], settings: Settings) -> BudgetView:
    """RSS of every VM whose QEMU process exists (running or paused)."""
    resident = {}
    for record in records:
        if hv.qemu_pid(record.domain_name) is not None or hv.is_active(record.domain_name):
            resident[record.name] = qemu_rss_mib(hv, record.domain_name)
    return BudgetView(settings.memory_budget_mib, resident)


class Meter(Protocol):
    """Measures the resident memory of VMs against the budget (the admission check's eyes)."""

    def __call__(self, records: list[VMRecord]) -> BudgetView: ...


class QemuMeter:
    """The real meter: each QEMU process's RSS on this host."""

    def __init__(self, hypervisor: Callable[[], Hypervisor], settings: Settings) -> None:
        self._hypervisor = hypervisor
        self.settings = settings

    def __call__(self, records: list[VMRecord]) -> BudgetView:
        return measure(self._hypervisor(), records, self.settings)
