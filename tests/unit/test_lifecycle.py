"""The lifecycle owner on libvirt's test driver: the transition table, admission, the
pure live state, interrupted creates and deletes, orphan domains."""

from __future__ import annotations

import itertools

import pytest

from core.errors import Conflict, InsufficientResources
from guest_agent.protocol import Subsystem
from orchestrator.domain_xml import SOMNUS_NS
from orchestrator.host import Host
from orchestrator.lifecycle import ALLOWED, live_state
from orchestrator.models import VMRecord, VMState
from orchestrator.views import fleet_view, status_view
from tests.fakes import StandInAgents, meter_of

S = VMState


def test_every_state_has_a_row_and_deleted_is_final() -> None:
    assert set(ALLOWED) == set(VMState)
    assert ALLOWED[S.DELETED] == frozenset()
    assert all(S.DELETED in targets for state, targets in ALLOWED.items() if state is not S.DELETED)
    assert all(S.ERROR in targets for state, targets in ALLOWED.items()
               if state not in (S.ERROR, S.DELETED))


@pytest.mark.parametrize(("start", "to"), [
    (a, b) for a, b in itertools.product(VMState, VMState)
    if a is not b and b not in ALLOWED[a]])
def test_a_move_the_table_forbids_is_refused_and_not_recorded(
    host: Host, start: VMState, to: VMState
) -> None:
    host.store.add_vm(VMRecord(name="vm", domain_name="d-vm", subsystem=Subsystem.CHAT,
                               state=start, memory_mib=512, vcpus=1, accel="tcg",
                               image_hash="x", vm_dir="/nowhere", ssh_port=1, agent_port=2))
    record = host.store.get_vm("vm")
    with pytest.raises(Conflict, match=f"cannot go from {start.value} to {to.value}"):
        host.lifecycle._move(record, to, "test")
    assert host.store.get_vm("vm").state is start
    assert len(host.store.history("vm")) == 1


def test_a_vm_that_can_never_fit_is_refused_before_anything_is_made(host: Host) -> None:
    with pytest.raises(InsufficientResources, match="memory budget is 6144 MiB") as caught:
        host.vms.create("huge", Subsystem.CHAT, memory_mib=999_999, wait=False)
    assert "\n" not in str(caught.value) and "--memory 5888" in str(caught.value)
    assert host.store.find_vm("huge") is None
    assert not host.vms.paths("huge").root.exists()
    assert not host.vms.hv.exists(host.vms.domain_name("huge"))
    with pytest.raises(InsufficientResources):
        host.vms.check_new("huge", memory_mib=999_999)  # what the API checks before 202


def test_start_is_admitted_against_the_measured_budget(host: Host, agents: StandInAgents) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    host.vms.stop("chat")
    meter_of(host).set(limit=1000, rss=900)
    host.vms.create("other", Subsystem.RESEARCH, memory_mib=512, wait=False)
    host.swap.settle()  # 'chat' was stopped: only 'other' is resident, at 900 MiB
    with pytest.raises(InsufficientResources):
        host.lifecycle.boot(host.store.get_vm("chat"), "test")  # 768 more do not fit beside 900
    # Through the service, the foreground policy makes room first (saves 'other'): it fits.
    host.vms.start("chat", wait=False)
    assert host.vms.hv.state(host.store.get_vm("other").domain_name) is S.SAVED
    assert host.store.foreground() == "chat"


def test_live_state_is_computed_from_record_and_domain() -> None:
    record = VMRecord(name="vm", domain_name="d", subsystem=Subsystem.CHAT, state=S.RUNNING,
                      memory_mib=512, vcpus=1, accel="tcg", image_hash="x", vm_dir="/",
                      ssh_port=1, agent_port=2)
    assert live_state(record, S.RUNNING).state is S.RUNNING
    assert live_state(record, S.PAUSED).state is S.PAUSED
    died = live_state(record, S.STOPPED)
    assert died.state is S.ERROR and "QEMU" in (died.error or "")
    gone = live_state(record, None)
    assert gone.state is S.ERROR and gone.error == "libvirt domain vanished"
    record.state = S.SAVING  # mid-operation: the record's word stands
    assert live_state(record, S.RUNNING).state is S.SAVING


def test_reads_change_nothing(host: Host, agents: StandInAgents) -> None:
    record, _ = host.vms.create("chat", Subsystem.CHAT, wait=False)
    host.vms.hv.stop(record.domain_name, force=True)  # QEMU dies behind our back
    history = host.store.history("chat")
    assert fleet_view(host.vms).vms[0].state is S.ERROR
    assert status_view(host.vms).vms[0].state is S.ERROR
    assert host.vms.info("chat").observed.state is S.ERROR
    assert host.store.get_vm("chat").state is S.RUNNING  # not written
    assert host.store.history("chat") == history
    assert host.vms.reconcile() == ["chat: QEMU process died -> error"]  # explicit: written


def test_a_create_killed_midway_is_undone_by_the_next_command(
    host: Host, agents: StandInAgents
) -> None:
    # What a create killed after its record and domain were made leaves behind.
    record = host.lifecycle.register(VMRecord(
        name="half", domain_name=host.vms.domain_name("half"), subsystem=Subsystem.CHAT,
        memory_mib=512, vcpus=1, accel="tcg", image_hash="x",
        vm_dir=str(host.vms.paths("half").root), ssh_port=46990, agent_port=46991))
    host.vms.paths("half").root.mkdir(parents=True)
    host.lifecycle.define(record, f"<domain type='test'><name>{record.domain_name}</name>"
                          "<memory unit='MiB'>128</memory><os><type>hvm</type></os></domain>")
    assert [v.state for v in fleet_view(host.vms).vms] == [S.CREATING]  # a read leaves it
    host.vms.create("next", Subsystem.CHAT, wait=False)  # any mutating command
    assert host.store.find_vm("half") is None
    assert not host.vms.hv.exists(record.domain_name)
    assert not host.vms.paths("half").root.exists()


def test_a_delete_killed_midway_is_finished_by_the_next_command(
    host: Host, agents: StandInAgents
) -> None:
    record, _ = host.vms.create("gone", Subsystem.CHAT, wait=False)
    host.lifecycle._move(record, S.DELETED, "deleted")  # the intent, then the process died
    host.vms.create("next", Subsystem.CHAT, wait=False)
    assert host.store.find_vm("gone") is None
    assert not host.vms.hv.exists(record.domain_name)
    assert not host.vms.paths("gone").root.exists()


def _domain(name: str, home: str | None) -> str:
    mark = (f"<metadata><somnus:vm xmlns:somnus='{SOMNUS_NS}' name='x' home='{home}'/>"
            "</metadata>") if home is not None else ""
    return (f"<domain type='test'><name>{name}</name>{mark}<memory unit='MiB'>128</memory>"
            "<os><type>hvm</type></os></domain>")


def test_orphan_domains_are_reported_and_pruned(host: Host, agents: StandInAgents) -> None:
    hv, prefix, home = host.vms.hv, host.settings.domain_prefix, str(host.settings.home)
    host.vms.create("owned", Subsystem.CHAT, wait=False)
    hv.define(_domain(f"{prefix}ghost", home))  # ours by metadata, no record
    hv.define(_domain("elsewhere-vm", home))  # ours by metadata, another name
    hv.define(_domain(f"{prefix}old", None))  # ours by prefix (made before metadata)
    hv.define(_domain("someone-else", "/other/home"))  # another home's: not ours
    try:
        found = {o.domain_name for o in host.vms.orphans()}
        assert found == {f"{prefix}ghost", "elsewhere-vm", f"{prefix}old"}
        assert {o.domain_name for o in status_view(host.vms).orphans} == found
        removed = host.vms.prune(host.vms.orphans())
        assert set(removed) == found and host.vms.orphans() == []
        assert hv.exists("someone-else") and hv.exists(host.vms.domain_name("owned"))
    finally:
        hv.undefine("someone-else")
        hv.undefine("elsewhere-vm")


def test_created_domains_carry_somnus_metadata(host: Host, agents: StandInAgents) -> None:
    record, _ = host.vms.create("chat", Subsystem.CHAT, wait=False)
    from orchestrator.domain_xml import somnus_owner

    assert somnus_owner(host.vms.hv.xml(record.domain_name)) == ("chat", str(host.settings.home))


def test_a_paused_vm_is_resumed_to_hear_the_shutdown_or_powered_off_without_room(
    host: Host, agents: StandInAgents
) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    host.vms.create("other", Subsystem.RESEARCH, memory_mib=512, wait=False)  # chat paused
    assert host.vms.stop("chat") is True  # resumed, then a clean ACPI shutdown
    assert [h.reason for h in host.store.history("chat")][-1] == "stopped"
    host.vms.create("third", Subsystem.ARTIFACTS, memory_mib=512, wait=False)  # other paused
    meter_of(host).set(limit=800, rss=700)  # no room to resume 'other'
    assert host.vms.stop("other") is False
    assert [h.reason for h in host.store.history("other")][-1] == "stopped (powered off)"
