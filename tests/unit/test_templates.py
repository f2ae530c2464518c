"""Templates: which VMs share one, a capture's folder, and a template that fails to start."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator import vms as vms_module
from orchestrator.host import Host
from orchestrator.models import VMState
from orchestrator.templates import MANIFEST, Templates, shape_key
from orchestrator.vms import VMService
from tests.fakes import PagedRam, StandInAgents


def backing_of(overlay: Path) -> str:
    info = subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                          capture_output=True, text=True, check=True).stdout
    return str(json.loads(info)["backing-filename"])


def test_the_shape_hash_follows_the_domain_and_the_facts() -> None:
    base = shape_key("<domain/>", {"image": "a", "subsystem": "chat"})
    assert base == shape_key("<domain/>", {"subsystem": "chat", "image": "a"})  # order-free
    assert base != shape_key("<domain><vcpu>2</vcpu></domain>", {"image": "a",
                                                                   "subsystem": "chat"})
    assert base != shape_key("<domain/>", {"image": "a", "subsystem": "research"})


def test_only_a_finished_capture_is_a_template(tmp_path: Path) -> None:
    templates = Templates(tmp_path / "templates")
    unfinished = templates.begin("s1")
    unfinished.state.write_bytes(b"state")
    assert templates.find("s1") is None  # no manifest yet
    capture = templates.begin("s1")  # a new capture removes the unfinished one
    assert not unfinished.folder.exists()
    capture.state.write_bytes(b"state")
    capture.disk.write_bytes(b"disk")
    made = templates.finish(capture, "s1", {"image": "a"}, "first", "t" * 64, "ssh-ed25519 AAAA")
    found = templates.find("s1")
    assert found is not None and found.folder == made.folder
    assert found.manifest.vm_name == "first" and found.manifest.token == "t" * 64
    assert ((capture.folder / MANIFEST).stat().st_mode & 0o777) == 0o600
    templates.begin("s1")  # a finished template is never removed by a new capture
    assert templates.find("s1") is not None and templates.find("s2") is None
    templates.drop(found)
    assert templates.find("s1") is None and templates.list() == []
    assert found.disk.exists()  # VMs made from it stand on its disk


def test_a_template_that_fails_to_start_is_dropped_and_the_vm_boots_cold(
        service: VMService, image: ImageManifest) -> None:
    shape, facts = service.shape(Subsystem.CHAT, 512, service.settings.default_vcpus, image)
    capture = service.templates.begin(shape)
    capture.state.write_bytes(b"not a save image")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image.disk), str(capture.disk)], check=True)
    template = service.templates.finish(capture, shape, facts, "first", "t" * 64,
                                        "ssh-ed25519 AAAA")
    warnings: list[str] = []

    record, _ = service.create("chat", Subsystem.CHAT, memory_mib=512, wait=False,
                               progress=warnings.append)
    assert record.state is VMState.RUNNING and service.hv.is_running(record.domain_name)
    assert any("booting cold" in w for w in warnings), warnings
    assert service.templates.find(shape) is None and template.disk.exists()
    assert backing_of(service.paths("chat").overlay) == str(image.disk)
    assert not service.paths("chat").boot_image.exists()


def test_cold_creates_skip_templates(service: VMService, image: ImageManifest) -> None:
    record, _ = service.create("chat", Subsystem.CHAT, memory_mib=512, wait=False,
                               from_template=False)
    assert backing_of(service.paths("chat").overlay) == str(image.disk)
    assert record.state is VMState.RUNNING and service.templates.list() == []



def test_a_vm_with_ram_in_a_file_is_captured_in_place_and_copied_into_new_vms(
    host: Host, image: ImageManifest, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template of such a VM is its device state and a sparse copy of its RAM file;
    a new VM of the shape gets its own copy of that RAM and loads the device state."""
    ram = PagedRam(monkeypatch)
    taken: list[str] = []
    monkeypatch.setattr(vms_module, "take_identity",
                        lambda _agent, identity: taken.append(identity.vm_name))
    service = host.vms
    record, _ = service.create("first", Subsystem.CHAT, memory_mib=512, wait=False)
    memory = b"the first boot's memory".ljust(4096, b".") + bytes(64 * 4096)
    service.paths("first").ram.write_bytes(memory)
    shape, facts = service.shape(Subsystem.CHAT, 512, service.settings.default_vcpus, image)
    capture = service.templates.begin(shape)

    def freeze() -> None:  # what VMService._capture does while the QEMU is gone
        os.link(service.paths("first").overlay, capture.disk)
        service.templates.finish(capture, shape, facts, "first", "t" * 64, "ssh-ed25519 A")

    assert host.lifecycle.capture(record, capture, freeze, "test") == "restored"
    assert ram.order == ["save_device_state", "start_waiting", "load_device_state"]
    assert service.store.get_vm("first").state is VMState.RUNNING
    assert capture.devices.read_bytes() == b"devices" and not capture.state.exists()
    assert capture.ram.read_bytes() == memory
    assert capture.ram.stat().st_blocks * 512 == 4096  # its zero pages take no disk
    assert capture.ram.stat().st_mode & 0o777 == 0o600  # guest memory
    template = service.templates.find(shape)
    assert template is not None and template.in_place

    clone, _ = service.create("clone", Subsystem.CHAT, memory_mib=512, wait=False)
    assert taken == ["clone"] and ram.order[-2:] == ["start_waiting", "load_device_state"]
    assert service.paths("clone").ram.read_bytes() == memory  # its own copy
    # It did not fall back to a cold boot (which drops the template).
    assert clone.state is VMState.RUNNING and service.templates.find(shape) is not None
