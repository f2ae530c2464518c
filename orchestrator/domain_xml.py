"""Build libvirt domain XML: the only place that knows its shape."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from orchestrator.accel import Acceleration

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
# Somnus's mark in <metadata>: which home owns the domain, so orphans can be told apart.
SOMNUS_NS = "urn:somnus:domain:1"
ET.register_namespace("somnus", SOMNUS_NS)

# On q35 the NIC gets a fixed slot on pcie.0: the default one clashes with libvirt's root ports.
NIC_PCI_ADDR = "0x9"
# ...which gives it this predictable name inside the guest.
GUEST_NIC_NAME = "enp0s9"
# The memory backend of guest RAM kept in a file (``ram_file_args``).
RAM_BACKEND = "somnus-ram"


@dataclass(frozen=True)
class DomainSpec:
    """What a Somnus VM is made of, as far as libvirt is concerned."""

    name: str
    memory_mib: int
    vcpus: int
    accel: Acceleration
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path
    seed: Path
    serial_log: Path
    ssh_port: int
    agent_port: int
    agent_guest_port: int
    # The artifacts VM's web artifacts (guest_agent.sandbox.web): None for other VMs.
    web_port: int | None = None
    web_guest_port: int = 0
    vm_name: str = ""  # the Somnus name (the domain's carries the home's prefix)
    owner_home: str = ""  # the Somnus home whose record owns this domain
    tb_cache_mib: int = 0  # TCG translation cache; 0 leaves QEMU's default (1 GiB)
    # Guest RAM as a shared mapping of this file (None: anonymous): it can be paged out
    # (orchestrator.eviction) and it outlives QEMU, so a save need not copy it.
    ram_file: Path | None = None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _disk(devices: ET.Element, source: Path, fmt: str, target: str, readonly: bool) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    driver = {"name": "qemu", "type": fmt}
    if not readonly:
        # Let the guest's TRIM shrink the overlay (Multipass #808: overlays that only grow).
        driver.update(discard="unmap", cache="writeback")
    _sub(disk, "driver", **driver)
    _sub(disk, "source", file=str(source))
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")


def user_netdev_args(spec: DomainSpec) -> list[str]:
    """QEMU user-mode networking: no outside network, loopback-only port forwards."""
    forwards = (
        f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22,"
        f"hostfwd=tcp:127.0.0.1:{spec.agent_port}-:{spec.agent_guest_port}"
    )
    if spec.web_port is not None:
        forwards += f",hostfwd=tcp:127.0.0.1:{spec.web_port}-:{spec.web_guest_port}"
    return [
        "-netdev", f"user,id=n0,restrict=on,{forwards}",
        "-device", f"virtio-net-pci,netdev=n0,bus=pcie.0,addr={NIC_PCI_ADDR}",
    ]


def _qemu_opt(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are doubled."""
    return value.replace(",", ",,")


def ram_file_args(spec: DomainSpec) -> list[str]:
    """Guest RAM in our own file, not libvirt's ``<memoryBacking><source type='file'/>``:
    libvirt puts that file under a per-start folder and deletes it when QEMU exits."""
    if spec.ram_file is None:
        return []
    return [
        "-object", f"memory-backend-file,id={RAM_BACKEND},mem-path={_qemu_opt(str(spec.ram_file))},"
                   f"share=on,size={spec.memory_mib}M",
        "-machine", f"memory-backend={RAM_BACKEND}",  # QEMU merges -machine: this one wins
    ]


def incoming_deferred(domain_xml: str) -> str:
    """The same domain, started to wait for a device state (``migrate-incoming``) instead
    of booting: how a VM saved in place comes back (``Hypervisor.load_device_state``)."""
    domain = ET.fromstring(domain_xml)
    cmdline = domain.find(f"{{{QEMU_NS}}}commandline")
    if cmdline is None:
        cmdline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
    for arg in ("-incoming", "defer"):
        ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(domain, encoding="unicode")


def build_domain_xml(spec: DomainSpec) -> str:
    """The complete <domain> document for ``spec``."""
    domain = ET.Element("domain", type=spec.accel.domain_type)
    _sub(domain, "name", spec.name)
    # A VM generation ID (libvirt makes one per domain): a guest restored from another
    # VM's save sees it change, and Linux reseeds its random generator.
    _sub(domain, "genid")
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus))
    metadata = _sub(domain, "metadata")
    ET.SubElement(metadata, f"{{{SOMNUS_NS}}}vm", name=spec.vm_name, home=spec.owner_home)

    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    _sub(os_el, "kernel", str(spec.kernel))
    _sub(os_el, "initrd", str(spec.initrd))
    _sub(os_el, "cmdline", spec.cmdline)

    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.accel.domain_type == "qemu" and spec.tb_cache_mib:
        # QEMU's system-mode default code buffer is 1 GiB: most of an idle guest's RSS.
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(spec.tb_cache_mib), unit="MiB")
    _sub(domain, "cpu", mode=spec.accel.cpu_mode)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    _disk(devices, spec.disk, "qcow2", "vda", readonly=False)
    _disk(devices, spec.seed, "raw", "vdb", readonly=True)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(spec.serial_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    # Without an entropy source a TCG guest can stall early boot waiting for the CRNG.
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    # Pages the guest frees go back to the host: less resident memory, smaller saves.
    _sub(devices, "memballoon", model="virtio", freePageReporting="on")

    cmdline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
    for arg in user_netdev_args(spec) + ram_file_args(spec):
        ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def somnus_owner(domain_xml: str) -> tuple[str, str] | None:
    """(Somnus name, owning home) from a domain's XML; None for a domain Somnus did not mark."""
    mark = ET.fromstring(domain_xml).find(f"metadata/{{{SOMNUS_NS}}}vm")
    if mark is None:
        return None
    return mark.get("name", ""), mark.get("home", "")
