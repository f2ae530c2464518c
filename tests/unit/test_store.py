"""The SQLite state store: records, unique ports, state history, persistence."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from core.errors import NotFound
from orchestrator.database import open_database
from orchestrator.models import Subsystem, VMRecord, VMState
from orchestrator.store import Store


def record(name: str, ssh: int, agent: int) -> VMRecord:
    return VMRecord(
        name=name,
        domain_name=f"somnus-{name}",
        subsystem=Subsystem.CHAT,
        memory_mib=512,
        vcpus=1,
        accel="tcg",
        image_hash="h",
        vm_dir=f"/v/{name}",
        ssh_port=ssh,
        agent_port=agent,
    )


def test_records_persist_across_store_instances(tmp_path: Path) -> None:
    db = tmp_path / "somnus.db"
    Store(open_database(db)).add_vm(record("a", 42000, 42001))
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    again = Store(open_database(db))
    assert again.get_vm("a").ssh_port == 42000
    assert again.used_ports() == {42000, 42001}


def test_state_history_records_transitions_with_reasons(tmp_path: Path) -> None:
    store = Store(open_database(tmp_path / "db"))
    store.add_vm(record("a", 1, 2))
    store.set_state("a", VMState.RUNNING, reason="ready")
    store.set_state("a", VMState.RUNNING, reason="ignored: unchanged")
    store.set_state("a", VMState.ERROR, reason="died", error="qemu exited")
    assert store.get_vm("a").last_error == "qemu exited"
    store.delete_vm("a")
    steps = [(h.from_state, h.to_state, h.reason) for h in store.history("a")]
    assert steps == [
        (None, VMState.CREATING, "created"),
        (VMState.CREATING, VMState.RUNNING, "ready"),
        (VMState.RUNNING, VMState.ERROR, "died"),
        (VMState.ERROR, VMState.DELETED, "deleted"),
    ]
    assert store.find_vm("a") is None


def test_duplicate_names_and_ports_are_refused_by_the_schema(tmp_path: Path) -> None:
    store = Store(open_database(tmp_path / "db"))
    store.add_vm(record("a", 1, 2))
    with pytest.raises(IntegrityError):
        store.add_vm(record("a", 3, 4))
    with pytest.raises(IntegrityError):
        store.add_vm(record("b", 1, 5))


def test_missing_vm_is_not_found_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no VM named 'ghost'"):
        Store(open_database(tmp_path / "db")).get_vm("ghost")
