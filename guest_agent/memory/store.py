"""SQLite source of truth for memories (with their embeddings) and small agent state.

The schema is made and kept current by ordered migrations, recorded in the
database's ``PRAGMA user_version`` and applied when the store opens.

Every mutation that changes which vectors exist bumps ``generation``; the
FAISS index records the generation it was built from, so a stale or foreign
index file is detected and rebuilt from here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guest_agent.protocol import (
    RETENTION_DAYS,
    MemoryImportance,
    MemoryRecord,
    MemoryScope,
    MemoryType,
)

# Migrations are history: one that has shipped is never edited; a schema change is a
# new function appended to MIGRATIONS. The database's ``PRAGMA user_version`` is the
# number of migrations applied (0: none, or a database made before migrations).
_M001 = (
    """CREATE TABLE IF NOT EXISTS memories (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_id TEXT NOT NULL UNIQUE,
    memory_type TEXT NOT NULL,
    importance TEXT NOT NULL,
    scope TEXT NOT NULL,
    content TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    metadata TEXT NOT NULL,
    conversation_id TEXT,
    created_at REAL NOT NULL,
    last_accessed REAL NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    embedding BLOB,
    embedding_model TEXT
)""",
    "CREATE INDEX IF NOT EXISTS memories_conversation ON memories (conversation_id, seq)",
    "CREATE INDEX IF NOT EXISTS memories_expiry ON memories (expires_at)",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO kv (key, value) VALUES ('generation', '0')",
)


def m001_initial(db: sqlite3.Connection) -> None:
    """Memories with their embeddings, and the key/value state (``generation`` at 0)."""
    for statement in _M001:
        db.execute(statement)


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (m001_initial,)


class MemorySchemaTooNew(RuntimeError):
    """The memory database was migrated by a newer guest agent than this one."""


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply the migrations past the database's ``user_version``; returns their names.

    ``db`` must be in autocommit mode (``isolation_level=None``): each migration runs
    in its own explicit transaction with the version bump, so a failing one leaves
    neither a half-changed schema nor a new version behind.
    """
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise MemorySchemaTooNew(
            f"memory database is at schema {version}, newer than this agent's "
            f"{len(migrations)}; update the guest agent (or its image)")
    if version == 0 and _has_table(db, "memories"):
        # Made before migrations: its tables are migration 1's, so only the mark is
        # missing; the rows are left as they are.
        _set_version(db, 1)
        version = 1
    applied: list[str] = []
    for number, fn in enumerate(migrations[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db)
            _set_version(db, number)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(fn.__name__)
    return applied


def _set_version(db: sqlite3.Connection, version: int) -> None:
    # PRAGMA takes no bound parameters; ``version`` is an int, never user text.
    db.execute(f"PRAGMA user_version = {int(version)}")


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (name,)).fetchone() is not None


_COLUMNS = (
    "seq, memory_id, memory_type, importance, scope, content, content_hash, tags, metadata, "
    "conversation_id, created_at, last_accessed, access_count, expires_at"
)
_INSERT = (
    "INSERT INTO memories (memory_id, memory_type, importance, scope, content, content_hash, "
    "tags, metadata, conversation_id, created_at, last_accessed, access_count, expires_at, "
    "embedding, embedding_model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DAY = 86400.0


def _row(r: MemoryRecord, vector: np.ndarray | None, model: str | None) -> tuple[object, ...]:
    blob = None if vector is None else vector.astype(np.float32).tobytes()
    return (
        r.memory_id, r.memory_type.value, r.importance.value, r.scope.value, r.content,
        r.content_hash, json.dumps(r.tags), json.dumps(r.metadata), r.conversation_id,
        r.created_at, r.last_accessed, r.access_count, r.expires_at,
        blob, model if blob is not None else None,
    )  # fmt: skip


def expiry(importance: MemoryImportance, last_accessed: float) -> float | None:
    """When a memory last touched at ``last_accessed`` expires (None: never)."""
    days = RETENTION_DAYS[importance]
    return None if days is None else last_accessed + days * DAY


@dataclass(frozen=True)
class StoredMemory:
    seq: int
    record: MemoryRecord


def _record(row: sqlite3.Row) -> StoredMemory:
    return StoredMemory(
        seq=row["seq"],
        record=MemoryRecord(
            memory_id=row["memory_id"],
            memory_type=MemoryType(row["memory_type"]),
            importance=MemoryImportance(row["importance"]),
            scope=MemoryScope(row["scope"]),
            content=row["content"],
            content_hash=row["content_hash"],
            tags=json.loads(row["tags"]),
            metadata=json.loads(row["metadata"]),
            conversation_id=row["conversation_id"],
            created_at=row["created_at"],
            last_accessed=row["last_accessed"],
            access_count=row["access_count"],
            expires_at=row["expires_at"],
        ),
    )


class MemoryStore:
    """Thread-safe access to the memory database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # WAL + NORMAL: a committed write survives an agent crash; flush() checkpoints
        # before the VM is saved so the main file alone is complete.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- small key/value state (prompt profile, roles, generation) -------------

    def kv_get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def kv_set(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @property
    def generation(self) -> int:
        return int(self.kv_get("generation") or 0)

    def _bump(self) -> None:
        self._db.execute(
            "UPDATE kv SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
        )

    # -- writes -----------------------------------------------------------------

    def insert_many(
        self,
        records: Sequence[MemoryRecord],
        embeddings: np.ndarray | None,
        embedding_model: str | None,
    ) -> list[int]:
        """Insert new records (hashes must be new) in one transaction; returns their seqs."""
        seqs: list[int] = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for i, r in enumerate(records):
                    vector = None if embeddings is None else embeddings[i]
                    cur = self._db.execute(_INSERT, _row(r, vector, embedding_model))
                    seqs.append(int(cur.lastrowid or 0))
                self._bump()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seqs

    def set_embeddings(self, seqs: Sequence[int], vectors: np.ndarray, model: str) -> None:
        """Store (re-)computed embeddings, e.g. after the embedding model changed."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE memories SET embedding = ?, embedding_model = ? WHERE seq = ?",
                [(vectors[i].astype(np.float32).tobytes(), model, s) for i, s in enumerate(seqs)],
            )
            self._bump()
            self._db.execute("COMMIT")

    def raise_importance(self, seq: int, importance: MemoryImportance, now: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE memories SET importance = ?, expires_at = ? WHERE seq = ?",
                (importance.value, expiry(importance, now), seq),
            )

    def touch(self, seqs: Iterable[int], now: float | None = None) -> None:
        """Record an access: retention counts from the last time a memory was used."""
        now = time.time() if now is None else now
        rows = list(seqs)
        if not rows:
            return
        with self._lock:
            for seq in rows:
                row = self._db.execute(
                    "SELECT importance FROM memories WHERE seq = ?", (seq,)
                ).fetchone()
                if row is None:
                    continue
                self._db.execute(
                    "UPDATE memories SET last_accessed = ?, access_count = access_count + 1, "
                    "expires_at = ? WHERE seq = ?",
                    (now, expiry(MemoryImportance(row["importance"]), now), seq),
                )

    def delete(self, memory_id: str) -> int | None:
        """Delete one memory; returns its seq, or None if there was none."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM memories WHERE memory_id = ?", (memory_id,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM memories WHERE seq = ?", (row["seq"],))
            self._bump()
            return int(row["seq"])

    def purge_expired(self, now: float | None = None) -> list[int]:
        """Delete memories past their retention; returns their seqs."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM memories WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
            ).fetchall()
            seqs = [int(r["seq"]) for r in rows]
            if seqs:
                self._db.execute(
                    "DELETE FROM memories WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
                )
                self._bump()
        return seqs

    def checkpoint(self) -> None:
        """Fold the WAL into the main database file."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reads ----------------------------------------------------------------

    def _select(self, where: str, params: Sequence[object]) -> list[StoredMemory]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM memories {where}", params).fetchall()
        return [_record(r) for r in rows]

    def by_hash(self, content_hash: str) -> StoredMemory | None:
        found = self._select("WHERE content_hash = ?", (content_hash,))
        return found[0] if found else None

    def by_id(self, memory_id: str) -> StoredMemory | None:
        found = self._select("WHERE memory_id = ?", (memory_id,))
        return found[0] if found else None

    def by_seqs(self, seqs: Sequence[int]) -> dict[int, StoredMemory]:
        found: dict[int, StoredMemory] = {}
        for start in range(0, len(seqs), 500):  # stay under SQLite's variable limit
            chunk = list(seqs[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for m in self._select(f"WHERE seq IN ({marks})", chunk):
                found[m.seq] = m
        return found

    def page(
        self,
        offset: int,
        limit: int,
        memory_type: MemoryType | None = None,
        conversation_id: str | None = None,
    ) -> tuple[list[StoredMemory], int]:
        """Memories oldest first, filtered, with the filtered total."""
        clauses, params = [], []
        if memory_type is not None:
            clauses.append("memory_type = ?")
            params.append(memory_type.value)
        if conversation_id is not None:
            clauses.append("conversation_id = ?")
            params.append(conversation_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            total = int(
                self._db.execute(f"SELECT COUNT(*) FROM memories {where}", params).fetchone()[0]
            )
        rows = self._select(f"{where} ORDER BY seq LIMIT ? OFFSET ?", [*params, limit, offset])
        return rows, total

    def recent(self, conversation_id: str, memory_type: MemoryType, n: int) -> list[StoredMemory]:
        """The last ``n`` memories of a type in one conversation, oldest first."""
        rows = self._select(
            "WHERE conversation_id = ? AND memory_type = ? ORDER BY seq DESC LIMIT ?",
            (conversation_id, memory_type.value, n),
        )
        return rows[::-1]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    def count_embedded(self, model: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM memories WHERE embedding IS NOT NULL AND embedding_model = ?",
                (model,),
            ).fetchone()
        return int(row[0])

    def stale_embeddings(self, model: str, dim: int) -> list[StoredMemory]:
        """Memories embedded by another model (or at another size): to embed again."""
        return self._select(
            "WHERE embedding IS NOT NULL AND (embedding_model IS NOT ? OR length(embedding) != ?)",
            (model, dim * 4),
        )

    def pending_embeddings(self, limit: int) -> list[StoredMemory]:
        """The oldest memories stored without a vector (added in the background)."""
        return self._select("WHERE embedding IS NULL ORDER BY seq LIMIT ?", (limit,))

    def count_pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM memories WHERE embedding IS NULL")
            return int(row.fetchone()[0])

    def fill_embeddings(self, seqs: Sequence[int], vectors: np.ndarray, model: str) -> list[int]:
        """Give vectors to rows still without one; returns the seqs filled (others were
        deleted meanwhile)."""
        filled: list[int] = []
        with self._lock:
            self._db.execute("BEGIN")
            for i, seq in enumerate(seqs):
                cur = self._db.execute(
                    "UPDATE memories SET embedding = ?, embedding_model = ? "
                    "WHERE seq = ? AND embedding IS NULL",
                    (vectors[i].astype(np.float32).tobytes(), model, seq),
                )
                if cur.rowcount:
                    filled.append(seq)
            self._bump()
            self._db.execute("COMMIT")
        return filled

    def iter_embeddings(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(seqs, vectors) of every stored embedding, in batches, for an index rebuild."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, embedding FROM memories WHERE seq > ? AND embedding IS NOT NULL "
                    "ORDER BY seq LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            seqs = np.fromiter((r["seq"] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.vstack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])
            yield seqs, vectors
            last = int(seqs[-1])
