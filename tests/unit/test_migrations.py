"""Host schema migrations: a pre-migration database keeps every row, each migration runs once."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import Connection, Engine, inspect
from sqlmodel import SQLModel

from core.errors import InvalidInput
from orchestrator import errors_log
from orchestrator.artifacts import tables as artifact_tables
from orchestrator.collab import tables as collab_tables
from orchestrator.database import open_database, sqlite_engine
from orchestrator.devsessions import tables as dev_tables
from orchestrator.devsessions.models import DevSessionEventType
from orchestrator.devsessions.store import DevSessionStore
from orchestrator.migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE,
    DatabaseTooNew,
    MigrationFailed,
    m001_initial,
    migrate,
    recorded,
)
from orchestrator.models import Subsystem, SwapOutcome, VMRecord, VMState
from orchestrator.projects import tables as project_tables
from orchestrator.projects.tables import CommitKind, ProjectStore, SourceKind
from orchestrator.security import tables as security_tables
from orchestrator.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"
SESSION_ID = UUID("11111111-2222-3333-4444-555555555555")
BLOCK_ID = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
V0_TABLES = ["vms", "vm_state_history", "swap_ledger", "system_cache", "vm_errors", "projects",
             "project_commits", "dev_sessions", "dev_session_events", "dev_code_blocks",
             "dev_code_block_versions"]


def load_v0(path: Path) -> Path:
    """A database file as Somnus made it before migrations (the frozen fixture)."""
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / "host-schema-v0.sql").read_text())
    return path


def row_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in V0_TABLES}


def names(engine: Engine) -> set[str] | None:
    with engine.connect() as conn:
        return recorded(conn)


def test_pre_migration_database_keeps_every_row_and_gains_domain_uuid(tmp_path: Path) -> None:
    db = load_v0(tmp_path / "somnus.db")
    before = row_counts(db)
    assert all(before.values()), f"the fixture must fill every table: {before}"

    engine = open_database(db)

    assert names(engine) == set(MIGRATIONS.names)
    assert row_counts(db) == before
    store = Store(engine)
    chat, dev = store.list_vms()
    assert (chat.name, chat.subsystem, chat.state, chat.ssh_port) == (
        "chat", Subsystem.CHAT, VMState.RUNNING, 42000)
    assert (dev.state, dev.last_error) == (VMState.ERROR, "qemu exited")
    assert chat.domain_uuid is None and dev.domain_uuid is None
    assert [(h.from_state, h.to_state, h.reason) for h in store.history("chat")] == [
        (None, VMState.CREATING, "created"), (VMState.CREATING, VMState.RUNNING, "ready")]
    (swap,) = store.swaps()
    assert (swap.to_vm, swap.outcome, swap.detail) == ("chat", SwapOutcome.DONE,
                                                       "first foreground")
    assert store.foreground() == "chat"
    cache = store.cache("chat")
    assert cache is not None and (cache.conversation_id, cache.last_answer) == ("conv-1", "hello")
    (error,) = errors_log.list_errors(store, "dev")
    assert (error.source, error.message) == ("operation start", "qemu exited with status 1")

    projects = ProjectStore(engine)
    project = projects.get("demo")
    assert (project.vm_name, project.source_kind, project.pending_note) == (
        "dev", SourceKind.SESSION, "undo abc")
    (commit,) = projects.commits("demo")
    assert (commit.sha, commit.kind, commit.event_id) == ("a" * 40, CommitKind.AI, 2)

    session = DevSessionStore(engine).load(SESSION_ID)
    assert session is not None and session.title == "fixture session"
    assert [e.event_type for e in session.event_log] == [
        DevSessionEventType.SESSION_START, DevSessionEventType.CODE_BLOCK_CREATED]
    block = session.code_blocks[BLOCK_ID]
    assert (block.filename, block.content, block.version) == ("hello.py", "print('hi')\n", 1)

    with sqlite3.connect(db) as raw:
        columns = {row[1]: row[2] for row in raw.execute("PRAGMA table_info(vms)")}
        assert columns["domain_uuid"] == "TEXT"
        assert raw.execute("SELECT COUNT(*) FROM vms WHERE domain_uuid IS NULL").fetchone() == (2,)
    # The new column is written and read through the store like any other.
    store.add_vm(VMRecord(name="new", domain_name="somnus-new", subsystem=Subsystem.CHAT,
                          memory_mib=512, vcpus=1, accel="tcg", image_hash="h", vm_dir="/v/new",
                          ssh_port=42010, agent_port=42011, domain_uuid="0f" * 16))
    assert store.get_vm("new").domain_uuid == "0f" * 16


def test_pre_migration_database_missing_lazily_made_tables_gets_them(tmp_path: Path) -> None:
    # Before migrations each store made its own tables on first use.
    db = load_v0(tmp_path / "somnus.db")
    with sqlite3.connect(db) as raw:
        raw.executescript("DROP TABLE vm_errors; DROP TABLE project_commits; DROP TABLE projects;")
    engine = open_database(db)
    assert names(engine) == set(MIGRATIONS.names)
    assert {"vm_errors", "projects", "project_commits"} <= set(inspect(engine).get_table_names())
    assert [vm.name for vm in Store(engine).list_vms()] == ["chat", "dev"]


def test_pre_migration_database_older_than_the_baseline_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "somnus.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE vms (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL)")
    with pytest.raises(InvalidInput, match=r"table vms lacks .*move it aside") as caught:
        open_database(db)
    assert "\n" not in str(caught.value)


def test_fresh_database_records_every_migration_in_order(tmp_path: Path) -> None:
    db = tmp_path / "somnus.db"
    engine = open_database(db)
    with sqlite3.connect(db) as raw:
        rows = raw.execute(f"SELECT name, applied_at FROM {MIGRATIONS_TABLE} ORDER BY rowid")
        recorded_rows = list(rows)
    assert [name for name, _ in recorded_rows] == MIGRATIONS.names
    assert MIGRATIONS.names[:2] == ["m001_initial", "m002_vms_domain_uuid"]
    assert all(applied_at for _, applied_at in recorded_rows)
    assert Store(engine).list_vms() == []
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.with_name("somnus.db-wal").stat().st_mode) == 0o600


def test_second_open_applies_nothing(tmp_path: Path) -> None:
    db = tmp_path / "somnus.db"
    open_database(db)
    with sqlite3.connect(db) as raw:
        first = list(raw.execute(f"SELECT * FROM {MIGRATIONS_TABLE} ORDER BY name"))
    engine = open_database(db)
    assert migrate(engine) == []
    with sqlite3.connect(db) as raw:
        assert list(raw.execute(f"SELECT * FROM {MIGRATIONS_TABLE} ORDER BY name")) == first


def test_a_failing_migration_rolls_back_and_records_nothing(tmp_path: Path) -> None:
    engine = open_database(tmp_path / "somnus.db")
    registry = MIGRATIONS.copy()

    @registry.register
    def m999_half_done(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half (x INTEGER)")
        conn.exec_driver_sql("ALTER TABLE vms ADD COLUMN half INTEGER")
        raise RuntimeError("disk on fire")

    with pytest.raises(MigrationFailed, match=r"m999_half_done failed \(disk on fire\)") as caught:
        migrate(engine, registry)
    assert "\n" not in str(caught.value)
    assert names(engine) == set(MIGRATIONS.names)
    assert "half" not in inspect(engine).get_table_names()
    assert "half" not in {c["name"] for c in inspect(engine).get_columns("vms")}
    assert "m999_half_done" not in MIGRATIONS.names


def test_a_migration_registered_twice_is_refused() -> None:
    registry = MIGRATIONS.copy()
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(m001_initial)


def test_a_database_from_a_newer_somnus_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "somnus.db"
    open_database(db).dispose()
    with sqlite3.connect(db) as raw:
        raw.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES ('m900_from_the_future', 'later')")
    with pytest.raises(DatabaseTooNew,
                       match=r"newer than this Somnus .*m900_from_the_future") as caught:
        open_database(db)
    assert isinstance(caught.value, InvalidInput)
    assert "\n" not in str(caught.value)


def test_two_processes_opening_a_new_database_at_once_both_succeed(tmp_path: Path) -> None:
    # The race is narrow (switching a new file to WAL answered 'locked' in ~1 of 100
    # four-way races before it was waited for): run it many times.
    for race in range(50):
        db = tmp_path / f"somnus-{race}.db"
        failures: list[BaseException] = []

        def open_it(db: Path = db, failures: list[BaseException] = failures) -> None:
            try:
                open_database(db).dispose()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [], race
        assert names(sqlite_engine(db)) == set(MIGRATIONS.names)


def schema(engine: Engine) -> dict[str, Any]:
    """Tables with their columns (by SQLite type affinity), keys, uniques and indexes."""
    insp = inspect(engine)

    def affinity(declared: str) -> str:
        # SQLite compares by affinity, so TEXT (a migration's ALTER) is VARCHAR (create_all).
        declared = declared.upper()
        return "TEXT" if any(k in declared for k in ("CHAR", "TEXT", "CLOB")) else declared

    return {
        table: {
            "columns": [(c["name"], affinity(str(c["type"])), c["nullable"])
                        for c in insp.get_columns(table)],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"])
                          for f in insp.get_foreign_keys(table)),
            "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), i["unique"])
                              for i in insp.get_indexes(table)),
        }
        for table in insp.get_table_names() if table != MIGRATIONS_TABLE
    }


def test_migrations_build_the_schema_the_models_describe(tmp_path: Path) -> None:
    # A model field without a migration (or the reverse) fails here.
    # every table module imported
    assert errors_log and dev_tables and project_tables and artifact_tables and security_tables
    assert collab_tables
    models = sqlite_engine(tmp_path / "models.db")
    SQLModel.metadata.create_all(models)
    assert schema(open_database(tmp_path / "migrated.db")) == schema(models)
    assert schema(open_database(load_v0(tmp_path / "v0.db"))) == schema(models)


def test_opening_the_database_again_loses_no_commit_of_another_host(tmp_path: Path) -> None:
    """Two hosts in one process (the API test's and the test session's): the second open
    must not drop SQLite's POSIX locks of the first, or another process deletes the WAL
    under it and its later commits vanish for everyone else."""
    import subprocess
    import sys

    from sqlalchemy import text

    db = tmp_path / "somnus.db"
    first = open_database(db)

    def insert(name: str) -> None:
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS probe (name TEXT)"))
            conn.execute(text("INSERT INTO probe VALUES (:n)"), {"n": name})

    def seen_by_another_process() -> list[str]:
        code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                "print(','.join(r[0] for r in c.execute('select name from probe'))); c.close()")
        out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip().split(",")

    insert("one")
    second = open_database(db)  # as a second Host in this process does
    assert seen_by_another_process() == ["one"]  # that process closes: it may checkpoint
    insert("two")
    assert seen_by_another_process() == ["one", "two"]
    first.dispose()
    second.dispose()
