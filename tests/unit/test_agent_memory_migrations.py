"""Guest memory database migrations: a pre-migration database keeps every memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from guest_agent.memory.chunking import Span
from guest_agent.memory.store import (
    MIGRATIONS,
    MemorySchemaTooNew,
    MemoryStore,
    migrate,
)
from guest_agent.protocol import MemoryImportance, MemoryType

FIXTURE = Path(__file__).parent.parent / "fixtures" / "guest-memory-v0.sql"


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_pre_migration_database_keeps_every_memory(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(FIXTURE.read_text())
    assert user_version(path) == 0

    store = MemoryStore(path)

    assert user_version(path) == len(MIGRATIONS)
    assert store.count() == 3
    ada = store.by_id("mem-0")
    assert ada is not None and ada.seq == 1
    assert (ada.record.content, ada.record.memory_type, ada.record.importance) == (
        "The user's name is Ada.", MemoryType.CORE_FACT, MemoryImportance.HIGH)
    assert (ada.record.tags, ada.record.access_count, ada.record.last_accessed) == (
        ["profile"], 1, 1795000100.0)
    directive = store.by_id("mem-1")
    assert directive is not None and directive.record.metadata == {"source": "chat"}
    (chat,) = store.recent("conv-1", MemoryType.CONVERSATION, 5)
    assert (chat.record.memory_id, chat.record.tags, chat.record.metadata) == (
        "mem-2", ["git", "debugging"], {"turn": 3, "pinned": False})
    assert store.count_embedded("fixture-embedder") == 2
    (ids, vectors), = store.iter_embeddings("fixture-embedder")
    assert ids.tolist() == [1, 2] and vectors.shape == (2, 4)  # chunk ids, in memory order
    assert store.generation == 2 and store.kv_get("prompt_profile") == "concise"
    assert store.count_pending() == 1  # the third memory had no vector: its chunk waits
    # New memories continue the old sequence.
    store.insert_many([ada.record.model_copy(update={
        "memory_id": "mem-3", "content": "new", "content_hash": "h3"})], [[Span(0, 3)]])
    new = store.by_id("mem-3")
    assert new is not None and new.seq == 4
    store.close()


def test_fresh_database_is_migrated_and_reopening_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    MemoryStore(path).close()
    assert user_version(path) == len(MIGRATIONS)
    store = MemoryStore(path)
    assert store.count() == 0 and store.generation == 0
    store.close()
    with sqlite3.connect(path, isolation_level=None) as db:
        assert migrate(db) == []


def test_a_failing_migration_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    MemoryStore(path).close()

    def m999_half_done(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("disk on fire")

    db = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(db, (*MIGRATIONS, m999_half_done))
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    db.close()
    assert user_version(path) == len(MIGRATIONS)


def test_a_database_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    MemoryStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(MemorySchemaTooNew, match=r"newer than this agent's .*update the guest"):
        MemoryStore(path)
