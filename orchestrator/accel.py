"""Choose KVM or TCG: KVM only where the CPU advertises it and /dev/kvm opens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.config import AccelMode


@dataclass(frozen=True)
class Acceleration:
    mode: AccelMode  # KVM or TCG, never AUTO
    reason: str

    @property
    def domain_type(self) -> str:
        """libvirt's <domain type=...>: 'kvm', or 'qemu' for pure emulation."""
        return "kvm" if self.mode is AccelMode.KVM else "qemu"

    @property
    def cpu_mode(self) -> str:
        return "host-passthrough" if self.mode is AccelMode.KVM else "maximum"


def kvm_usable(cpuinfo: Path = Path("/proc/cpuinfo"), kvm_dev: Path = Path("/dev/kvm")) -> tuple[
    bool, str
]:
    """Whether KVM can boot a stock guest here, and why (not).

    /dev/kvm alone is not enough: some sandboxes expose a paravirtual KVM
    (kvm_pvm) that opens fine but hangs stock kernels; those CPUs show no vmx/svm.
    """
    try:
        flags = {
            word
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
            for word in line.split(":", 1)[1].split()
        }
    except OSError as exc:
        return False, f"cannot read {cpuinfo}: {exc.strerror}"
    if not flags & {"vmx", "svm"}:
        return False, "CPU has no vmx/svm flag"
    if not kvm_dev.exists():
        return False, f"{kvm_dev} is missing"
    try:
        fd = os.open(kvm_dev, os.O_RDWR)
    except OSError as exc:
        return False, f"{kvm_dev} cannot be opened: {exc.strerror}"
    os.close(fd)
    return True, "vmx/svm present and /dev/kvm opens"


def detect(requested: AccelMode, probe: tuple[bool, str] | None = None) -> Acceleration:
    """Resolve the configured mode; ``probe`` overrides the host check (for tests)."""
    if requested is AccelMode.TCG:
        return Acceleration(AccelMode.TCG, "forced by setting")
    if requested is AccelMode.KVM:
        return Acceleration(AccelMode.KVM, "forced by setting")
    usable, why = probe if probe is not None else kvm_usable()
    return Acceleration(AccelMode.KVM if usable else AccelMode.TCG, why)
