"""KVM/TCG detection: flags, device, and the setting that forces either."""

from __future__ import annotations

from pathlib import Path

from core.config import AccelMode
from orchestrator.accel import detect, kvm_usable


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu {flags} sse4_2\n")
    return path


def test_no_virtualisation_flag_means_tcg(tmp_path: Path) -> None:
    usable, why = kvm_usable(cpuinfo(tmp_path, "avx2"), tmp_path / "kvm")
    assert not usable and "vmx/svm" in why


def test_flag_without_device_means_tcg(tmp_path: Path) -> None:
    usable, why = kvm_usable(cpuinfo(tmp_path, "vmx"), tmp_path / "missing-kvm")
    assert not usable and "missing" in why


def test_flag_and_openable_device_means_kvm(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    assert kvm_usable(cpuinfo(tmp_path, "svm"), device)[0]


def test_setting_forces_either_mode() -> None:
    assert detect(AccelMode.TCG, probe=(True, "kvm fine")).mode is AccelMode.TCG
    assert detect(AccelMode.KVM, probe=(False, "no kvm")).mode is AccelMode.KVM
    assert detect(AccelMode.AUTO, probe=(True, "ok")).mode is AccelMode.KVM
    assert detect(AccelMode.AUTO, probe=(False, "no")).domain_type == "qemu"


def test_this_machine_is_detected_without_error() -> None:
    # Whatever this host is, detection must answer with a reason rather than raise.
    result = detect(AccelMode.AUTO)
    assert result.mode in (AccelMode.KVM, AccelMode.TCG) and result.reason
