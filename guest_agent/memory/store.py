"""SQLite source of truth for memories, their chunks (with vectors) and small agent state.

A memory's text is cut into chunks (``chunking``) when it is stored; each chunk has a
row in ``chunks`` (its span, its vector once embedded, the model that embedded it) and
in the FTS5 table ``chunks_fts`` (BM25 keyword search). A chunk without a vector is
*pending*: found by keywords at once, by meaning once the worker embeds it.

The schema is made and kept current by ordered migrations, recorded in the
database's ``PRAGMA user_version`` and applied when the store opens.

Every mutation that changes which vectors exist bumps ``generation``; the
FAISS index (keyed by ``chunk_id``) records the generation it was built from, so a
stale or foreign index file is detected and rebuilt from here.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guest_agent.memory import chunking
from guest_agent.memory.chunking import Span
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


_M002 = (
    """CREATE TABLE chunks (
    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    embedding BLOB,
    embedding_model TEXT,
    UNIQUE (memory_seq, position)
)""",
    "CREATE INDEX chunks_pending ON chunks (chunk_id) WHERE embedding IS NULL",
    "CREATE VIRTUAL TABLE chunks_fts USING fts5(text, tokenize = 'porter unicode61')",
    # However a memory goes (delete, expiry), its chunks and their words go with it.
    """CREATE TRIGGER memories_drop_chunks AFTER DELETE ON memories BEGIN
    DELETE FROM chunks_fts WHERE rowid IN (SELECT chunk_id FROM chunks WHERE memory_seq = old.seq);
    DELETE FROM chunks WHERE memory_seq = old.seq;
END""",
)


def m002_chunks_and_keywords(db: sqlite3.Connection) -> None:
    """Vectors move from memories to their chunks; every chunk's words go into FTS5.

    A memory that fits one chunk keeps its vector; a longer one (cut at 512 tokens
    before) is embedded again, chunk by chunk, by the worker.
    """
    for statement in _M002:
        db.execute(statement)
    rows = db.execute("SELECT seq, content, embedding, embedding_model FROM memories").fetchall()
    for seq, content, embedding, model in rows:
        spans = chunking.split(content)
        kept = (embedding, model) if len(spans) == 1 else (None, None)
        _insert_chunks(db, seq, content, spans, [kept] * len(spans))
    db.execute("ALTER TABLE memories DROP COLUMN embedding")
    db.execute("ALTER TABLE memories DROP COLUMN embedding_model")


def _insert_chunks(db: sqlite3.Connection, seq: int, content: str, spans: Sequence[Span],
                   vectors: Sequence[tuple[bytes | None, str | None]]) -> list[int]:
    ids: list[int] = []
    for position, (span, (blob, model)) in enumerate(zip(spans, vectors, strict=True)):
        cur = db.execute(
            "INSERT INTO chunks (memory_seq, position, start, end, embedding, embedding_model) "
            "VALUES (?, ?, ?, ?, ?, ?)", (seq, position, span.start, span.end, blob, model))
        chunk_id = int(cur.lastrowid or 0)
        db.execute("INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)",
                   (chunk_id, chunking.indexed_text(content, span)))
        ids.append(chunk_id)
    return ids


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Migration, ...] = (m001_initial, m002_chunks_and_keywords)


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
    "tags, metadata, conversation_id, created_at, last_accessed, access_count, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DAY = 86400.0
# A query's words for FTS5, each quoted (so no word is read as FTS5 syntax).
_QUERY_WORD = re.compile(r"\w+")
# Question words a keyword query leaves out: they match everywhere and crowd out the
# words that matter (recall@5 on bench.pydoc's set: 0.625 with them, 0.662 without).
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or", "should", "that", "the",
    "this", "to", "was", "we", "what", "when", "where", "which", "who", "why", "will", "with",
    "you", "your",
})


def _row(r: MemoryRecord) -> tuple[object, ...]:
    return (
        r.memory_id, r.memory_type.value, r.importance.value, r.scope.value, r.content,
        r.content_hash, json.dumps(r.tags), json.dumps(r.metadata), r.conversation_id,
        r.created_at, r.last_accessed, r.access_count, r.expires_at,
    )  # fmt: skip


def _blob(vector: np.ndarray) -> bytes:
    return vector.astype(np.float32).tobytes()


# One statement per touched memory: its expiry moves by its importance's retention.
_TOUCH = (
    "UPDATE memories SET last_accessed = :now, access_count = access_count + 1, expires_at = "
    "CASE importance "
    + " ".join(f"WHEN '{i.value}' THEN :now + {days * DAY}"
               for i, days in RETENTION_DAYS.items() if days is not None)
    + " ELSE NULL END WHERE seq = :seq"
)


def expiry(importance: MemoryImportance, last_accessed: float) -> float | None:
    """When a memory last touched at ``last_accessed`` expires (None: never)."""
    days = RETENTION_DAYS[importance]
    return None if days is None else last_accessed + days * DAY


@dataclass(frozen=True)
class StoredMemory:
    seq: int
    record: MemoryRecord


@dataclass(frozen=True)
class LocatedChunk:
    """A search candidate: where a chunk lies (the ``position``-th of memory
    ``memory_seq``, characters ``start:end``) and what filters and ranking read of its
    memory, without building the whole record."""

    chunk_id: int
    memory_seq: int
    position: int
    start: int
    end: int
    memory_id: str
    memory_type: MemoryType
    importance: MemoryImportance
    conversation_id: str | None
    expires_at: float | None
    last_accessed: float
    access_count: int


@dataclass(frozen=True)
class PendingChunk:
    chunk_id: int
    text: str


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
        self.closed = False
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
            self.closed = True
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
        spans: Sequence[Sequence[Span]],
        vectors: np.ndarray | None = None,
        embedding_model: str | None = None,
    ) -> list[tuple[int, list[int]]]:
        """Insert new records (hashes must be new) with their chunks, in one transaction.

        ``vectors`` has a row per chunk, records in order (None: the chunks are pending).
        Returns each record's seq and chunk ids.
        """
        if vectors is not None and len(vectors) != sum(len(c) for c in spans):
            raise ValueError("one vector per chunk")
        ids: list[tuple[int, list[int]]] = []
        row = 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for record, chunks in zip(records, spans, strict=True):
                    cur = self._db.execute(_INSERT, _row(record))
                    blobs: list[tuple[bytes | None, str | None]] = [(None, None)] * len(chunks)
                    if vectors is not None:
                        mine = vectors[row : row + len(chunks)]
                        blobs = [(_blob(v), embedding_model) for v in mine]
                        row += len(chunks)
                    seq = int(cur.lastrowid or 0)
                    ids.append((seq, _insert_chunks(self._db, seq, record.content, chunks, blobs)))
                self._bump()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def raise_importance(self, seq: int, importance: MemoryImportance, now: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE memories SET importance = ?, expires_at = ? WHERE seq = ?",
                (importance.value, expiry(importance, now), seq),
            )

    def touch(self, accessed: Mapping[int, float]) -> None:
        """Record accesses (memory seq -> when): retention counts from the last use."""
        if not accessed:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(_TOUCH, [{"now": t, "seq": s} for s, t in accessed.items()])
            self._db.execute("COMMIT")

    def delete(self, memory_id: str) -> list[int] | None:
        """Delete one memory; returns its chunk ids, or None if there was none."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM memories WHERE memory_id = ?", (memory_id,)
            ).fetchone()
            if row is None:
                return None
            chunk_ids = self._chunk_ids("memory_seq = ?", (row["seq"],))
            self._db.execute("DELETE FROM memories WHERE seq = ?", (row["seq"],))
            self._bump()
            return chunk_ids

    def purge_expired(self, now: float | None = None) -> list[int]:
        """Delete memories past their retention; returns their chunk ids."""
        now = time.time() if now is None else now
        expired = "expires_at IS NOT NULL AND expires_at < ?"
        with self._lock:
            chunk_ids = self._chunk_ids(
                f"memory_seq IN (SELECT seq FROM memories WHERE {expired})", (now,))
            if self._db.execute(f"DELETE FROM memories WHERE {expired}", (now,)).rowcount:
                self._bump()
        return chunk_ids

    def _chunk_ids(self, where: str, params: Sequence[object]) -> list[int]:
        rows = self._db.execute(f"SELECT chunk_id FROM chunks WHERE {where}", params)
        return [int(r[0]) for r in rows]

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
                "SELECT COUNT(*) FROM chunks WHERE embedding_model = ?", (model,)).fetchone()
        return int(row[0])

    def count_pending(self) -> int:
        """Chunks without a vector (found by keywords, not yet by meaning)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM chunks WHERE embedding IS NULL")
            return int(row.fetchone()[0])

    def forget_embeddings(self, keep_model: str) -> int:
        """Make every chunk another model embedded pending again (its vector cannot share
        an index with ``keep_model``'s); returns how many. The text stays: nothing is lost."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE chunks SET embedding = NULL, embedding_model = NULL "
                "WHERE embedding IS NOT NULL AND embedding_model IS NOT ?", (keep_model,))
            if cur.rowcount:
                self._bump()
            return int(cur.rowcount)

    def pending_chunks(self, limit: int) -> list[PendingChunk]:
        """The oldest chunks without a vector, with the text to embed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.chunk_id, m.content, c.start, c.end "
                "FROM chunks c JOIN memories m ON m.seq = c.memory_seq "
                "WHERE c.embedding IS NULL ORDER BY c.chunk_id LIMIT ?", (limit,)).fetchall()
        return [PendingChunk(r[0], chunking.indexed_text(r[1], Span(r[2], r[3]))) for r in rows]

    def fill_embeddings(self, chunk_ids: Sequence[int], vectors: np.ndarray,
                        model: str) -> list[int]:
        """Give vectors to chunks still without one; returns the ids filled (the others'
        memories were deleted meanwhile)."""
        filled: list[int] = []
        with self._lock:
            self._db.execute("BEGIN")
            for i, chunk_id in enumerate(chunk_ids):
                cur = self._db.execute(
                    "UPDATE chunks SET embedding = ?, embedding_model = ? "
                    "WHERE chunk_id = ? AND embedding IS NULL",
                    (_blob(vectors[i]), model, chunk_id),
                )
                if cur.rowcount:
                    filled.append(chunk_id)
            self._bump()
            self._db.execute("COMMIT")
        return filled

    def iter_embeddings(self, model: str, batch: int = 4096
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(chunk ids, vectors) of every chunk ``model`` embedded, in batches, for an
        index rebuild."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT chunk_id, embedding FROM chunks WHERE chunk_id > ? "
                    "AND embedding_model = ? ORDER BY chunk_id LIMIT ?",
                    (last, model, batch),
                ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            yield ids, vectors
            last = int(ids[-1])

    def locate(self, chunk_ids: Sequence[int]) -> dict[int, LocatedChunk]:
        """Each of ``chunk_ids`` with its memory's filter fields (deleted ones are absent)."""
        found: dict[int, LocatedChunk] = {}
        for start in range(0, len(chunk_ids), 500):  # stay under SQLite's variable limit
            part = list(chunk_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            with self._lock:
                rows = self._db.execute(
                    "SELECT c.chunk_id, c.memory_seq, c.position, c.start, c.end, m.memory_id, "
                    "m.memory_type, m.importance, m.conversation_id, m.expires_at, "
                    "m.last_accessed, m.access_count FROM chunks c "
                    f"JOIN memories m ON m.seq = c.memory_seq WHERE c.chunk_id IN ({marks})",
                    part).fetchall()
            for r in rows:
                found[r[0]] = LocatedChunk(r[0], r[1], r[2], r[3], r[4], r[5],
                                           MemoryType(r[6]), MemoryImportance(r[7]), *r[8:])
        return found

    def catalog_rows(self) -> Iterator[tuple[int, int, str, str, str | None]]:
        """(chunk id, memory seq, type, importance, conversation) of every chunk."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.chunk_id, c.memory_seq, m.memory_type, m.importance, m.conversation_id "
                "FROM chunks c JOIN memories m ON m.seq = c.memory_seq").fetchall()
        for r in rows:
            yield r[0], r[1], r[2], r[3], r[4]

    def keyword_search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """Chunks matching any word of ``query``, best BM25 first: (chunk id, score >= 0)."""
        words = [w for w in _QUERY_WORD.findall(query.lower()) if w not in STOPWORDS]
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts) LIMIT ?", (match, limit)).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]  # bm25() is lower-is-better
