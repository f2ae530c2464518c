"""VMs started from a template: each one its own machine, and in seconds.

The session's first VM of a shape (the shared ``vmtest``) was captured as its template;
run alone, this module makes that first VM itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.errors import GuestError
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator.agent_client import AgentClient
from orchestrator.host import Host
from orchestrator.templates import Template
from orchestrator.vms import VMService

pytestmark = pytest.mark.vm

CLONES = ("clone-a", "clone-b")
MEMORY_MIB = 1024  # vmtest's shape
TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def template(host: Host, image: ImageManifest) -> Iterator[Template]:
    service = host.vms
    shape, _ = service.shape(Subsystem.CHAT, MEMORY_MIB, service.settings.default_vcpus, image)
    made = []
    if service.templates.find(shape) is None:
        service.create("first", Subsystem.CHAT, memory_mib=MEMORY_MIB, progress=print)
        made.append("first")
    found = service.templates.find(shape)
    assert found is not None, "the first VM of the shape was not saved as a template"
    try:
        for name in CLONES:
            _record, TIMINGS[name] = service.create(name, Subsystem.CHAT, memory_mib=MEMORY_MIB,
                                                    progress=print)
            made.append(name)
            print(name, TIMINGS[name])
        yield found
    finally:
        for name in made:
            if service.store.find_vm(name) is not None:
                service.delete(name)


def facts(service: VMService, name: str) -> list[str]:
    """hostname, machine-id and SSH host key, read over SSH (which checks the host key)."""
    # sudo: cloud-init writes the public host key 0600 when it sets it from the seed.
    command = ("hostname; cat /etc/machine-id; "
               "sudo cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub")
    return service.run(name, command).stdout.split("\n")[:3]


def test_new_vms_start_from_the_template(template: Template, host: Host) -> None:
    for name in CLONES:
        assert "restore from template" in TIMINGS[name] and "identity" in TIMINGS[name], TIMINGS
        console = host.vms.paths(name).serial_log.read_bytes()
        # Its console begins with the boot its RAM comes from, then says so.
        boot = template.boot_log.read_bytes()
        assert boot and console.startswith(boot), console[:300]
        assert f"'{name}' started here from template".encode() in console[len(boot):]


def test_each_vm_from_one_template_is_its_own_machine(template: Template, host: Host) -> None:
    service = host.vms
    seen = {}
    for name in CLONES:
        host.swap.activate(name)
        seen[name] = facts(service, name)
        hostname, machine_id, host_key = seen[name]
        assert hostname == name
        known = service.paths(name).known_hosts.read_text().split()
        assert host_key.split() == known[1:3]  # the key the host made for it, not the template's
        assert template.manifest.host_public.split()[1] != host_key.split()[1]
        assert len(machine_id) == 32
    a, b = (seen[name] for name in CLONES)
    assert a[1] != b[1] and a[2] != b[2], seen


def test_each_vm_answers_only_its_own_token(template: Template, host: Host) -> None:
    service = host.vms
    records = {name: service.store.get_vm(name) for name in CLONES}
    tokens = {name: service.paths(name).token.read_text().strip() for name in CLONES}
    for name in CLONES:
        host.swap.activate(name)
        port = records[name].agent_port
        assert AgentClient(port, tokens[name]).health().vm_name == name
        other = next(n for n in CLONES if n != name)
        for wrong in (tokens[other], template.manifest.token):
            with pytest.raises(GuestError, match="refused the VM's token"):
                AgentClient(port, wrong).health()


def test_a_vm_from_a_template_boots_cold_as_itself(template: Template, host: Host) -> None:
    """Its seed carries the identity it took: a cold boot (cloud-init, a new instance)
    keeps the same host key, token and name."""
    service = host.vms
    name = CLONES[1]
    host.swap.activate(name)
    before = facts(service, name)
    service.stop(name)
    timings = service.start(name)
    assert set(timings) == {"domain running", "ssh", "cloud-init", "agent"}
    after = facts(service, name)
    assert after == before, (before, after)
