"""The API server's live view on libvirt's test driver, which emits real lifecycle events."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from core.config import Settings
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator.host import Host
from orchestrator.hypervisor import Hypervisor
from orchestrator.live import LiveView, start_event_loop
from orchestrator.models import VMRecord, VMState
from orchestrator.views import fleet_view
from tests.fakes import fake_host


@pytest.fixture
def watched(settings: Settings, image: ImageManifest) -> Iterator[tuple[Host, LiveView, VMRecord]]:
    """A running VM on the test driver, and a live view subscribed to its events."""
    start_event_loop()  # before the connection that subscribes is opened
    host = fake_host(settings, Hypervisor(settings.libvirt_uri))
    view = None
    try:
        record, _ = host.vms.create("chat", Subsystem.CHAT, wait=False)
        view = LiveView(host.hypervisor, host.lifecycle.current)
        view.start()
        assert view.state_of(record) is VMState.RUNNING
        yield host, view, record
    finally:
        if view is not None:
            view.stop()
        hv = host.hypervisor()
        for name in hv.domain_names(settings.domain_prefix):
            hv.undefine(name)
        host.close()


def destroyed_elsewhere(settings: Settings, view: LiveView, record: VMRecord) -> VMState | None:
    """Destroy the VM's domain from another connection, as 'virsh destroy' would, and
    wait (up to a second) for the view to see it."""
    Hypervisor(settings.libvirt_uri).stop(record.domain_name, force=True)
    deadline = time.monotonic() + 1.0
    while view.state_of(record) is VMState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    return view.state_of(record)


def test_the_live_view_follows_a_domain_destroyed_behind_its_back(
    settings: Settings, watched: tuple[Host, LiveView, VMRecord]
) -> None:
    host, view, record = watched
    calls = 0
    real_state = host.vms.hv.state  # what Lifecycle.current asks

    def counted(name: str) -> VMState:
        nonlocal calls
        calls += 1
        return real_state(name)

    host.vms.hv.state = counted  # type: ignore[method-assign]
    for _ in range(20):
        assert view.state_of(record) is VMState.RUNNING
    assert calls == 0  # no event, no libvirt call

    assert destroyed_elsewhere(settings, view, record) is VMState.STOPPED
    assert view.events >= 1
    listed = fleet_view(host.vms, view.state_of)
    assert listed.vms[0].state is VMState.ERROR  # it was running: QEMU died
    assert host.store.get_vm("chat").state is VMState.RUNNING  # a read wrote nothing


def test_the_live_view_shows_a_vm_saved_in_place_whose_qemu_went_as_saved(
    settings: Settings, watched: tuple[Host, LiveView, VMRecord]
) -> None:
    """Its device state is on disk and its domain is off: libvirt alone says 'stopped'."""
    host, view, record = watched
    host.vms.paths("chat").device_state.write_bytes(b"devices")
    assert destroyed_elsewhere(settings, view, record) is VMState.SAVED
