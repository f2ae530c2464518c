"""The API server's live view on libvirt's test driver, which emits real lifecycle events."""

from __future__ import annotations

import time

from core.config import Settings
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator.hypervisor import Hypervisor
from orchestrator.live import LiveView, start_event_loop
from orchestrator.models import VMState
from orchestrator.views import fleet_view
from tests.fakes import fake_host


def test_the_live_view_follows_a_domain_destroyed_behind_its_back(
    settings: Settings, image: ImageManifest
) -> None:
    start_event_loop()  # before the connection that subscribes is opened
    host = fake_host(settings, Hypervisor(settings.libvirt_uri))
    try:
        record, _ = host.vms.create("chat", Subsystem.CHAT, wait=False)
        view = LiveView(host.hypervisor)
        view.start()
        assert view.state_of(record) is VMState.RUNNING
        calls = 0
        real_state = host.vms.hv.state

        def counted(name: str) -> VMState:
            nonlocal calls
            calls += 1
            return real_state(name)

        host.vms.hv.state = counted  # type: ignore[method-assign]
        for _ in range(20):
            assert view.state_of(record) is VMState.RUNNING
        assert calls == 0  # no event, no libvirt call

        # Another connection, as 'virsh destroy' would be.
        Hypervisor(settings.libvirt_uri).stop(record.domain_name, force=True)
        deadline = time.monotonic() + 1.0
        while view.state_of(record) is not VMState.STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert view.state_of(record) is VMState.STOPPED and view.events >= 1
        listed = fleet_view(host.vms, view.state_of)
        assert listed.vms[0].state is VMState.ERROR  # it was running: QEMU died
        assert host.store.get_vm("chat").state is VMState.RUNNING  # a read wrote nothing
        view.stop()
    finally:
        hv = host.hypervisor()
        for name in hv.domain_names(settings.domain_prefix):
            hv.undefine(name)
        host.close()
