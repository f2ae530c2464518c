"""VM service lifecycle on libvirt's test driver: a real libvirt, without QEMU.

Files (overlay via qemu-img, seed via genisoimage) and the SQLite store are real.
"""

from __future__ import annotations

import subprocess

import pytest

from core.config import Settings
from core.errors import (
    AlreadyExists,
    Conflict,
    GuestError,
    HypervisorUnavailable,
    InsufficientResources,
    InvalidInput,
    NotFound,
)
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator import disks
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import VMState
from orchestrator.vms import VMService, validate_name
from tests.fakes import fake_host


@pytest.mark.parametrize("name", ["a", "Chat", "1chat", "chat-", "ch--at", "x" * 33, "ch_at", ""])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_name(name)


def test_create_defines_a_domain_and_files(service: VMService) -> None:
    record, timings = service.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    assert "provision" in timings
    paths = service.paths("chat")
    assert paths.overlay.is_file() and paths.seed.is_file() and paths.known_hosts.is_file()
    assert (paths.token.stat().st_mode & 0o777) == 0o600
    assert service.hv.is_running(record.domain_name)
    info = subprocess.run(
        ["qemu-img", "info", str(paths.overlay)], capture_output=True, text=True, check=True
    ).stdout
    assert "backing file:" in info  # an overlay, never a copy of the base
    assert record.ssh_port != record.agent_port


def test_two_vms_never_share_ports(service: VMService) -> None:
    a, _ = service.create("one", Subsystem.CHAT, wait=False)
    b, _ = service.create("two", Subsystem.RESEARCH, wait=False)
    assert len({a.ssh_port, a.agent_port, b.ssh_port, b.agent_port}) == 4


def test_duplicate_name_is_refused_and_first_vm_untouched(service: VMService) -> None:
    service.create("chat", Subsystem.CHAT, wait=False)
    with pytest.raises(AlreadyExists):
        service.create("chat", Subsystem.CHAT, wait=False)
    assert service.paths("chat").overlay.exists()


def test_failure_midway_leaves_nothing_behind(
    service: VMService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*_args: object) -> None:
        raise InsufficientResources("disk full while writing the overlay")

    monkeypatch.setattr(disks, "create_overlay", full_disk)
    with pytest.raises(InsufficientResources):
        service.create("chat", Subsystem.CHAT, wait=False)
    assert service.store.find_vm("chat") is None
    assert not service.paths("chat").root.exists()
    assert not service.hv.exists(service.domain_name("chat"))


def test_not_enough_disk_is_refused_before_anything_is_made(
    settings: Settings, image: ImageManifest
) -> None:
    settings.min_free_disk_mib = 10**9
    svc = fake_host(settings, Hypervisor(settings.libvirt_uri)).vms
    with pytest.raises(InsufficientResources, match="not enough disk space"):
        svc.create("chat", Subsystem.CHAT, wait=False)
    assert svc.store.list_vms() == [] and not svc.paths("chat").root.exists()


def test_missing_image_is_not_found(service: VMService) -> None:
    with pytest.raises(NotFound, match="no image matches"):
        service.create("chat", Subsystem.CHAT, image_ref="ffff", wait=False)
    assert service.store.list_vms() == []


def test_stop_start_and_state_history(service: VMService) -> None:
    service.create("chat", Subsystem.CHAT, wait=False)
    service.store.set_state("chat", VMState.RUNNING, reason="test: ready")
    ram = service.paths("chat").ram
    ram.write_bytes(b"guest memory" * 1000)
    service.stop("chat")
    assert service.store.get_vm("chat").state is VMState.STOPPED
    assert ram.exists() and ram.stat().st_size == 0  # no disk kept for RAM it no longer has
    service.start("chat", wait=False)
    with pytest.raises(Conflict, match="already up"):
        service.start("chat", wait=False)
    states = [h.to_state for h in service.store.history("chat")]
    assert states == [VMState.CREATING, VMState.RUNNING, VMState.STOPPED, VMState.RUNNING]


def test_domain_deleted_behind_our_back_is_reported(service: VMService) -> None:
    record, _ = service.create("chat", Subsystem.CHAT, wait=False)
    service.hv.undefine(record.domain_name)
    changes = service.reconcile()
    assert changes == ["chat: domain gone from libvirt -> error"]
    assert service.list_vms()[0].state is VMState.ERROR
    with pytest.raises(NotFound, match="is gone"):
        service.start("chat", wait=False)
    service.delete("chat")  # cleaning up a VM whose domain vanished works
    assert service.store.list_vms() == []


def test_qemu_gone_while_running_is_marked_error(service: VMService) -> None:
    record, _ = service.create("chat", Subsystem.CHAT, wait=False)
    service.store.set_state("chat", VMState.RUNNING, reason="test: ready")
    service.hv.stop(record.domain_name, force=True)
    assert service.reconcile() == ["chat: QEMU process died -> error"]
    assert [r.state for r in service.list_vms()] == [VMState.ERROR]


def test_reconcile_follows_a_settled_state_changed_outside_somnus(service: VMService) -> None:
    record, _ = service.create("chat", Subsystem.CHAT, wait=False)
    service.store.set_state("chat", VMState.RUNNING, reason="test: ready")
    service.hv.pause(record.domain_name)
    assert service.reconcile() == ["chat: running -> paused"]


def test_delete_removes_domain_files_and_record(service: VMService) -> None:
    record, _ = service.create("chat", Subsystem.CHAT, wait=False)
    service.delete("chat")
    assert not service.hv.exists(record.domain_name)
    assert not service.paths("chat").root.exists()
    assert service.store.find_vm("chat") is None
    with pytest.raises(NotFound):
        service.delete("chat")


def test_libvirt_not_running_is_one_clear_line() -> None:
    with pytest.raises(HypervisorUnavailable, match="cannot connect to libvirt") as caught:
        Hypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert "\n" not in str(caught.value)


def test_undecodable_libvirt_error_is_still_one_clear_line() -> None:
    # What libvirt-python raises when QEMU quotes bytes of a corrupt save file.
    from orchestrator.hypervisor import _one_line

    try:
        try:
            b"\xff\xfe".decode()
        except UnicodeDecodeError as cause:
            raise SystemError("virDomainCreate returned a result with an exception set") \
                from cause
    except SystemError as exc:
        line = _one_line(exc)
    assert "undecodable" in line and "\n" not in line


@pytest.mark.parametrize("description", ["bell\x07", "nul\x00", "x" * 1001])
def test_a_snapshot_description_libvirt_cannot_store_is_refused(
        service: VMService, description: str) -> None:
    with pytest.raises(InvalidInput, match="snapshot description"):
        service.snapshot_create("anyvm", "before", description)


def test_a_vm_that_dies_while_booting_is_reported_with_why(service: VMService) -> None:
    """A domain that stops during readiness fails at once, saying how it stopped."""
    record, _ = service.create("chat", Subsystem.CHAT, wait=False)
    assert service.hv.why_down(record.domain_name) is None
    service.hv.pause(record.domain_name)
    assert service.hv.why_down(record.domain_name) == "paused (by a client)"
    service.hv.stop(record.domain_name, force=True)
    with pytest.raises(GuestError, match=r"stopped during stage 'domain running': "
                                         r"shut off \(destroyed\); serial log: "):
        service.wait_ready(record)
    assert service.store.find_vm("chat").state is VMState.ERROR  # type: ignore[union-attr]
    service.delete("chat")
    assert service.hv.why_down(record.domain_name) == "its domain is gone"
