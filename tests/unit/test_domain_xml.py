"""Domain XML: the shape libvirt gets, checked by parsing it back."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from core.config import AccelMode
from orchestrator.accel import Acceleration
from orchestrator.domain_xml import QEMU_NS, DomainSpec, build_domain_xml, incoming_deferred


def make_spec(mode: AccelMode = AccelMode.TCG) -> DomainSpec:
    return DomainSpec(
        name="somnus-unit",
        memory_mib=768,
        vcpus=2,
        accel=Acceleration(mode, "test"),
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        cmdline="root=LABEL=somnus-root rw console=ttyS0",
        disk=Path("/vm/disk.qcow2"),
        seed=Path("/vm/seed.iso"),
        serial_log=Path("/vm/serial.log"),
        ssh_port=42010,
        agent_port=42011,
        agent_guest_port=8700,
    )


def test_tcg_domain_uses_qemu_type_and_maximum_cpu() -> None:
    root = ET.fromstring(build_domain_xml(make_spec()))
    assert root.get("type") == "qemu"
    assert root.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    assert root.findtext("memory") == "768" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"


def test_kvm_domain_uses_kvm_type_and_host_cpu() -> None:
    root = ET.fromstring(build_domain_xml(make_spec(AccelMode.KVM)))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_direct_kernel_boot() -> None:
    os_el = ET.fromstring(build_domain_xml(make_spec())).find("os")
    assert os_el is not None
    assert os_el.findtext("kernel") == "/img/vmlinuz"
    assert os_el.findtext("initrd") == "/img/initrd.img"
    assert "console=ttyS0" in (os_el.findtext("cmdline") or "")
    assert os_el.find("type").get("machine") == "q35"  # type: ignore[union-attr]


def test_disks_overlay_with_discard_and_readonly_seed() -> None:
    disks = ET.fromstring(build_domain_xml(make_spec())).findall("devices/disk")
    overlay, seed = disks
    assert overlay.find("source").get("file") == "/vm/disk.qcow2"  # type: ignore[union-attr]
    assert overlay.find("driver").get("discard") == "unmap"  # type: ignore[union-attr]
    assert overlay.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    assert overlay.find("readonly") is None
    assert seed.find("source").get("file") == "/vm/seed.iso"  # type: ignore[union-attr]
    assert seed.find("readonly") is not None
    assert seed.find("target").get("bus") == "virtio"  # type: ignore[union-attr]


def test_network_is_restricted_user_mode_on_loopback_only() -> None:
    root = ET.fromstring(build_domain_xml(make_spec()))
    assert root.find("devices/interface") is None  # never libvirt's NAT network
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev is not None and "restrict=on" in netdev
    assert "hostfwd=tcp:127.0.0.1:42010-:22" in netdev
    assert "hostfwd=tcp:127.0.0.1:42011-:8700" in netdev
    assert netdev.count("hostfwd=") == 2
    assert all(h.startswith("hostfwd=tcp:127.0.0.1:") for h in netdev.split(",") if "hostfwd" in h)


def test_serial_is_logged_to_the_vm_folder() -> None:
    log = ET.fromstring(build_domain_xml(make_spec())).find("devices/serial/log")
    assert log is not None and log.get("file") == "/vm/serial.log"


def qemu_args(xml: str) -> list[str]:
    return [a.get("value", "") for a in ET.fromstring(xml).iter(f"{{{QEMU_NS}}}arg")]


def test_guest_ram_is_our_shared_file_only_when_asked() -> None:
    spec = replace(make_spec(), ram_file=Path("/vm/odd,name/guest.ram"))
    args = qemu_args(build_domain_xml(spec))
    backend = args[args.index("-object") + 1]
    # Commas in the path are doubled: QEMU would read them as the next option.
    assert backend == ("memory-backend-file,id=somnus-ram,mem-path=/vm/odd,,name/guest.ram,"
                       "share=on,size=768M")
    assert args[args.index("-machine") + 1] == "memory-backend=somnus-ram"
    # Not libvirt's file backing: its file is deleted when QEMU exits.
    assert ET.fromstring(build_domain_xml(spec)).find("memoryBacking") is None
    assert "-object" not in qemu_args(build_domain_xml(make_spec()))


def test_an_incoming_deferred_domain_is_the_same_domain_waiting_for_its_state() -> None:
    xml = build_domain_xml(replace(make_spec(), ram_file=Path("/vm/guest.ram")))
    waiting = incoming_deferred(xml)
    assert qemu_args(waiting) == [*qemu_args(xml), "-incoming", "defer"]
    assert ET.fromstring(waiting).findtext("name") == "somnus-unit"
    assert incoming_deferred("<domain type='qemu'><name>x</name></domain>").count("defer") == 1


def test_tcg_translation_cache_is_capped_when_asked_and_never_under_kvm() -> None:
    capped = ET.fromstring(build_domain_xml(replace(make_spec(), tb_cache_mib=256)))
    tb_cache = capped.find("features/tcg/tb-cache")
    assert tb_cache is not None and (tb_cache.text, tb_cache.get("unit")) == ("256", "MiB")
    kvm = ET.fromstring(build_domain_xml(replace(make_spec(AccelMode.KVM), tb_cache_mib=256)))
    assert kvm.find("features/tcg") is None


def test_every_domain_has_a_vm_generation_id() -> None:
    # A clone restored from a template must look new to the guest kernel
    # (it reseeds its RNG when the generation id changes), so libvirt
    # assigns a fresh <genid> to every domain it defines.
    root = ET.fromstring(build_domain_xml(make_spec()))
    assert root.find("genid") is not None
    assert root.find("genid").text is None  # type: ignore[union-attr]
