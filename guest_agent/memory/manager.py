"""Memory service: store, deduplicate, embed, search, export/import, flush.

The store opens at once (list, get and export work while the model loads);
search and add need ``attach`` with an embedder, which loads the saved FAISS
index or rebuilds it from SQLite when it is missing, corrupt or stale.

A memory added with ``background=True`` is stored at once and embedded by one
worker thread soon after: under TCG a short document takes minutes to embed, and
importing a project should not wait for that. It is listed at once and found by
search once its vector is in the index.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from guest_agent.memory.index import VectorIndex
from guest_agent.memory.store import MemoryStore, StoredMemory, expiry
from guest_agent.protocol import (
    IMPORTANCE_RANK,
    IndexKind,
    MemoryAddResponse,
    MemoryCreate,
    MemoryFlushResponse,
    MemoryHit,
    MemoryImportance,
    MemoryImportResponse,
    MemoryRecord,
    MemorySearchRequest,
    MemoryType,
)
from guest_agent.runtime import Embeddings

log = logging.getLogger(__name__)

DB_FILE = "memory.sqlite3"
INDEX_FILE = "memory.faiss"
REEMBED_BATCH = 64
# The worker embeds this many at a time, so a search waits behind one small batch at most.
BACKGROUND_BATCH = 4
RETRY_AFTER_S = 30.0  # after an embedding failure, before the worker tries again


class Embedder(Protocol):
    """What memory needs from the model runtime."""

    @property
    def model_id(self) -> str: ...

    @property
    def embedding_dim(self) -> int: ...

    def embed(self, texts: Sequence[str], truncate: bool) -> Embeddings: ...


class MemoryNotReady(RuntimeError):
    """Search or add was called before an embedder was attached."""


class MemoryNotFound(KeyError):
    pass


def content_hash(content: str) -> str:
    """Dedup key: SHA-256 of the content with whitespace runs collapsed."""
    return hashlib.sha256(re.sub(r"\s+", " ", content.strip()).encode()).hexdigest()


def new_record(item: MemoryCreate, now: float) -> MemoryRecord:
    return MemoryRecord(
        **item.model_dump(),
        memory_id=uuid.uuid4().hex,
        content_hash=content_hash(item.content),
        created_at=now,
        last_accessed=now,
        expires_at=expiry(item.importance, now),
    )


@dataclass(frozen=True)
class SearchFilter:
    memory_types: frozenset[str] | None = None
    min_importance: MemoryImportance | None = None
    conversation_id: str | None = None
    exclude_ids: frozenset[str] = frozenset()

    def accepts(self, record: MemoryRecord, now: float) -> bool:
        if record.expires_at is not None and record.expires_at < now:
            return False
        if record.memory_id in self.exclude_ids:
            return False
        if self.memory_types is not None and record.memory_type not in self.memory_types:
            return False
        if self.conversation_id is not None and record.conversation_id != self.conversation_id:
            return False
        return self.min_importance is None or (
            IMPORTANCE_RANK[record.importance] >= IMPORTANCE_RANK[self.min_importance]
        )


class MemoryManager:
    """The VM's memory: SQLite source of truth plus a derived FAISS index."""

    def __init__(self, data_dir: Path, kind: IndexKind = IndexKind.FLAT) -> None:
        self.store = MemoryStore(data_dir / DB_FILE)
        self.index_path = data_dir / INDEX_FILE
        self.kind = kind
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self._lock = threading.RLock()  # index and its bookkeeping
        self.rebuilt_on_attach = False
        self._wake = threading.Event()  # set when memories wait for a vector
        self._closing = False
        self._worker: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._index is not None

    @property
    def index_size(self) -> int:
        return 0 if self._index is None else self._index.ntotal

    @property
    def pending(self) -> int:
        """Memories stored but not embedded yet (not searchable yet)."""
        return self.store.count_pending()

    def _require(self) -> tuple[Embedder, VectorIndex]:
        if self._embedder is None or self._index is None:
            raise MemoryNotReady("memory index is not ready (model loading)")
        return self._embedder, self._index

    # -- lifecycle ------------------------------------------------------------

    def attach(self, embedder: Embedder) -> None:
        """Bind the embedder; load the saved index or rebuild it from SQLite."""
        with self._lock:
            self._embedder = embedder
            self.store.purge_expired()
            self._embed_stale(embedder)
            loaded = VectorIndex.load(
                self.index_path,
                embedder.embedding_dim,
                self.kind,
                self.store.generation,
                embedder.model_id,
            )
            self.rebuilt_on_attach = loaded is None
            self._index = loaded if loaded is not None else self._build(embedder.embedding_dim)
        if self._worker is None:
            self._worker = threading.Thread(target=self._embed_loop, name="memory-embed",
                                            daemon=True)
            self._worker.start()
        self._wake.set()  # memories left pending by the last run

    def _embed_stale(self, embedder: Embedder) -> None:
        """Embed again the rows another model embedded: their vectors cannot share an index."""
        todo = self.store.stale_embeddings(embedder.model_id, embedder.embedding_dim)
        for start in range(0, len(todo), REEMBED_BATCH):
            batch = todo[start : start + REEMBED_BATCH]
            vectors = embedder.embed([m.record.content for m in batch], truncate=True).vectors
            self.store.set_embeddings([m.seq for m in batch], vectors, embedder.model_id)

    def _build(self, dim: int) -> VectorIndex:
        index = VectorIndex(dim, self.kind)
        for seqs, vectors in self.store.iter_embeddings():
            index.add(seqs, vectors)
        return index

    def rebuild_index(self) -> None:
        """Throw the index away and derive it again from SQLite."""
        embedder, _ = self._require()
        with self._lock:
            self._index = self._build(embedder.embedding_dim)

    def flush(self) -> MemoryFlushResponse:
        """Purge expired memories, checkpoint SQLite and write the index to disk."""
        with self._lock:
            purged = self.store.purge_expired()
            rebuilt = False
            if self._index is not None and self._embedder is not None:
                self._index.remove(purged)
                if self._index.stale:  # HNSW keeps deleted vectors until rebuilt
                    self._index = self._build(self._embedder.embedding_dim)
                    rebuilt = True
                self._index.save(self.index_path, self.store.generation, self._embedder.model_id)
            self.store.checkpoint()
            return MemoryFlushResponse(
                memories=self.store.count(),
                index_size=self.index_size,
                expired_purged=len(purged),
                index_rebuilt=rebuilt,
            )

    def _embed_loop(self) -> None:
        while not self._closing:
            self._wake.wait()
            self._wake.clear()
            try:
                while not self._closing and self.embed_pending(BACKGROUND_BATCH):
                    pass
            except Exception:
                log.exception("embedding pending memories failed; retrying in %.0f s",
                              RETRY_AFTER_S)
                time.sleep(RETRY_AFTER_S)
                self._wake.set()

    def embed_pending(self, limit: int) -> int:
        """Embed up to ``limit`` memories stored without a vector and index them.

        The embedding runs outside the lock (searches and adds go on); a memory
        deleted meanwhile is skipped. Returns how many were indexed.
        """
        embedder, index = self._require()
        todo = self.store.pending_embeddings(limit)
        if not todo:
            return 0
        vectors = embedder.embed([m.record.content for m in todo], truncate=True).vectors
        with self._lock:
            seqs = [m.seq for m in todo]
            filled = set(self.store.fill_embeddings(seqs, vectors, embedder.model_id))
            keep = [i for i, seq in enumerate(seqs) if seq in filled]
            if keep:
                index.add(np.asarray([seqs[i] for i in keep], dtype=np.int64), vectors[keep])
        return len(todo)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._worker is not None:
            # A batch in flight finishes first; its rows stay pending if it does not.
            self._worker.join(timeout=5)
        if self.ready:
            self.flush()
        self.store.close()

    # -- writes -----------------------------------------------------------------

    def add(self, item: MemoryCreate, background: bool = False) -> MemoryAddResponse:
        """Store one memory, or return the existing one with the same content.

        With ``background`` the vector is computed later by the worker (see the module).
        """
        embedder, index = self._require()
        now = time.time()
        with self._lock:
            existing = self.store.by_hash(content_hash(item.content))
            if existing is not None:
                return MemoryAddResponse(
                    memory=self._keep(existing, item.importance, now), deduplicated=True
                )
            if background:
                record = new_record(item, now)
                self.store.insert_many([record], None, None)
                self._wake.set()
                return MemoryAddResponse(memory=record, deduplicated=False,
                                         embedding_pending=True)
            emb = embedder.embed([item.content], truncate=True)
            record = new_record(item, now)
            seqs = self.store.insert_many([record], emb.vectors, embedder.model_id)
            index.add(np.asarray(seqs, dtype=np.int64), emb.vectors)
            return MemoryAddResponse(
                memory=record, deduplicated=False, embedding_truncated=emb.truncated[0]
            )

    def _keep(
        self, existing: StoredMemory, importance: MemoryImportance, now: float
    ) -> MemoryRecord:
        """A duplicate refreshes the original and can only raise its importance."""
        if IMPORTANCE_RANK[importance] > IMPORTANCE_RANK[existing.record.importance]:
            self.store.raise_importance(existing.seq, importance, now)
        self.store.touch([existing.seq], now)
        found = self.store.by_hash(existing.record.content_hash)
        return (found or existing).record

    def add_records(
        self, records: Sequence[MemoryRecord], vectors: np.ndarray | None = None
    ) -> tuple[int, int]:
        """Bulk insert (import, benchmarks); embeds unless ``vectors`` are given.

        Returns (inserted, deduplicated). Records keep their ids and timestamps.
        """
        embedder, index = self._require()
        with self._lock:
            seen: set[str] = set()
            fresh: list[int] = []
            for i, r in enumerate(records):
                if r.content_hash in seen or self.store.by_hash(r.content_hash) is not None:
                    continue
                seen.add(r.content_hash)
                fresh.append(i)
            if not fresh:
                return 0, len(records)
            chosen = [records[i] for i in fresh]
            if vectors is None:
                vecs = embedder.embed([r.content for r in chosen], truncate=True).vectors
            else:
                vecs = vectors[fresh]
            seqs = self.store.insert_many(chosen, vecs, embedder.model_id)
            index.add(np.asarray(seqs, dtype=np.int64), vecs)
            return len(chosen), len(records) - len(chosen)

    def delete(self, memory_id: str) -> None:
        with self._lock:
            seq = self.store.delete(memory_id)
            if seq is None:
                raise MemoryNotFound(memory_id)
            if self._index is not None:
                self._index.remove([seq])

    # -- reads ----------------------------------------------------------------

    def get_memory_by_id(self, memory_id: str) -> MemoryRecord:
        """One memory by id (raises ``MemoryNotFound``)."""
        found = self.store.by_id(memory_id)
        if found is None:
            raise MemoryNotFound(memory_id)
        return found.record

    def search(
        self, request: MemorySearchRequest, exclude_ids: Iterable[str] = ()
    ) -> list[MemoryHit]:
        """Nearest memories by meaning, filtered; over-fetches until enough pass the filter."""
        embedder, _ = self._require()
        vector = embedder.embed([request.query], truncate=True).vectors[0]
        wanted = SearchFilter(
            memory_types=frozenset(request.memory_types) if request.memory_types else None,
            min_importance=request.min_importance,
            conversation_id=request.conversation_id,
            exclude_ids=frozenset(exclude_ids),
        )
        return self.search_vector(vector, request.top_k, wanted)

    def search_vector(
        self, vector: np.ndarray, top_k: int, wanted: SearchFilter
    ) -> list[MemoryHit]:
        _, index = self._require()
        now = time.time()
        with self._lock:
            total = index.ntotal
            fetch = min(total, max(top_k * 4, top_k + index.stale))
            while True:
                scored = index.search(vector, fetch)
                rows = self.store.by_seqs([seq for seq, _ in scored])
                hits = [
                    (rows[seq], score)
                    for seq, score in scored
                    if seq in rows and wanted.accepts(rows[seq].record, now)
                ]
                if len(hits) >= top_k or fetch >= total:
                    break
                fetch = min(total, fetch * 4)
        hits = hits[:top_k]
        self.store.touch([m.seq for m, _ in hits], now)
        return [MemoryHit(memory=m.record, score=score) for m, score in hits]

    def recent_turns(self, conversation_id: str, n: int) -> list[MemoryRecord]:
        rows = self.store.recent(conversation_id, MemoryType.CONVERSATION, n)
        return [m.record for m in rows]

    # -- export / import ----------------------------------------------------------

    def export_lines(self, batch: int = 1000) -> Iterator[str]:
        """Every memory as one JSON line (vectors are derived, so not exported)."""
        offset = 0
        while True:
            rows, _ = self.store.page(offset, batch)
            if not rows:
                return
            for m in rows:
                yield m.record.model_dump_json() + "\n"
            offset += len(rows)

    def import_lines(self, lines: Iterable[str]) -> MemoryImportResponse:
        """Load JSON lines from ``export_lines``; duplicates (by content hash) are skipped."""
        records: list[MemoryRecord] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = MemoryRecord.model_validate_json(line)
            except ValueError as exc:
                raise ValueError(f"line {number}: not a memory record: {exc}") from exc
            # Recompute: the hash is our dedup key and must match our own rule.
            records.append(record.model_copy(update={"content_hash": content_hash(record.content)}))
        inserted, duplicates = 0, 0
        for start in range(0, len(records), REEMBED_BATCH):
            done, dup = self.add_records(records[start : start + REEMBED_BATCH])
            inserted, duplicates = inserted + done, duplicates + dup
        return MemoryImportResponse(imported=inserted, deduplicated=duplicates)
