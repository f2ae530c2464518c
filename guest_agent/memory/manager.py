"""Memory service: store, deduplicate, chunk, embed, search, export/import, flush.

The store opens at once (list, get and export work while the model loads);
search and add need ``attach`` with an embedder, which loads the saved FAISS
index (of chunk vectors) or rebuilds it from SQLite when it is missing, corrupt or stale.

A memory is cut into chunks when stored (``chunking``). Its chunks' words are
searchable at once (FTS5); their vectors are computed now, or with ``background=True``
by one worker thread soon after: under TCG a short document takes minutes to embed,
and importing a project should not wait for that.

Vectors belong to the model that made them. Attached to another embedding model, the
store makes the old vectors pending and the worker embeds every chunk again from the
stored text, while search goes on (keywords find everything; vectors what is done).

Search (``RetrievalMode``) is hybrid by default: the nearest chunks by meaning and the
best chunks by BM25, fused by reciprocal rank, one chunk per memory unless asked for more
(``ranking``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from guest_agent.memory import chunking, ranking
from guest_agent.memory.catalog import ChunkCatalog
from guest_agent.memory.index import VectorIndex, index_kind
from guest_agent.memory.store import LocatedChunk, MemoryStore, StoredMemory, expiry
from guest_agent.protocol import (
    IMPORTANCE_RANK,
    IndexKind,
    MemoryAddResponse,
    MemoryChunk,
    MemoryCreate,
    MemoryFlushResponse,
    MemoryHit,
    MemoryImportance,
    MemoryImportResponse,
    MemoryRecord,
    MemorySearchRequest,
    MemoryType,
    RetrievalMode,
)
from guest_agent.protocol.redaction import redact
from guest_agent.protocol.security import Redaction
from guest_agent.runtime import Embeddings

log = logging.getLogger(__name__)

DB_FILE = "memory.sqlite3"
INDEX_FILE = "memory.faiss"
REEMBED_BATCH = 64
# The worker embeds this many chunks at a time, so a search waits behind one small batch.
BACKGROUND_BATCH = 4
# Candidates each retriever offers before fusion (more when filters reject many).
CANDIDATES = 50
RETRY_AFTER_S = 30.0  # after an embedding failure, before the worker tries again
HEADING_TOKENS = 64  # room kept in a chunk for its memory's and section's headings (indexed_text)
TOUCH_EVERY_S = 2.0  # how often the worker writes the accesses searches noted


class Embedder(Protocol):
    """What memory needs from the model runtime."""

    @property
    def embedding_model_id(self) -> str: ...

    @property
    def embedding_dim(self) -> int: ...

    def embed(self, texts: Sequence[str], truncate: bool) -> Embeddings: ...

    def fits_embedding(self, text: str, spare: int = 0) -> bool: ...


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

    def accepts(self, chunk: LocatedChunk, now: float) -> bool:
        if chunk.expires_at is not None and chunk.expires_at < now:
            return False
        if chunk.memory_id in self.exclude_ids:
            return False
        if self.memory_types is not None and chunk.memory_type not in self.memory_types:
            return False
        if self.conversation_id is not None and chunk.conversation_id != self.conversation_id:
            return False
        return self.min_importance is None or (
            IMPORTANCE_RANK[chunk.importance] >= IMPORTANCE_RANK[self.min_importance]
        )


class MemoryManager:
    """The VM's memory: SQLite source of truth plus a derived FAISS index.

    Secrets are redacted from every memory before it is hashed and stored (``_redacted``);
    ``on_redaction`` hears of each memory that had some (the security log).
    """

    def __init__(self, data_dir: Path, kind: IndexKind = IndexKind.AUTO,
                 on_redaction: Callable[[Redaction], None] | None = None) -> None:
        self.store = MemoryStore(data_dir / DB_FILE)
        self.on_redaction = on_redaction
        self.index_path = data_dir / INDEX_FILE
        self.kind = kind
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self._catalog = ChunkCatalog()  # what filters read, per chunk id
        self._lock = threading.RLock()  # index and its bookkeeping
        self.rebuilt_on_attach = False
        self._wake = threading.Event()  # set when memories wait for a vector
        # Accesses to record (seq -> when): the worker writes them, so that a search
        # never waits on a SQLite commit (nor on the WAL checkpoint one may start).
        self._accessed: dict[int, float] = {}
        self._closing = False
        self._worker: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._index is not None

    @property
    def index_size(self) -> int:
        return 0 if self._index is None else self._index.ntotal

    @property
    def index_kind(self) -> IndexKind | None:
        """The index in use (never AUTO: what AUTO chose), None before ``attach``."""
        return None if self._index is None else self._index.kind

    @property
    def pending(self) -> int:
        """Chunks stored but not embedded yet (found by keywords, not yet by meaning)."""
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
            self._catalog = self._build_catalog()
            model = embedder.embedding_model_id
            if forgotten := self.store.forget_embeddings(keep_model=model):
                log.info("memory: %d chunks were embedded by another model; embedding them "
                         "again with %s in the background", forgotten, model)
            kind = index_kind(self.kind, self.store.count_embedded(model))
            loaded = VectorIndex.load(self.index_path, embedder.embedding_dim, kind,
                                      self.store.generation, model)
            self.rebuilt_on_attach = loaded is None
            self._index = loaded if loaded is not None else self._build(embedder)
        if self._worker is None:
            self._worker = threading.Thread(target=self._embed_loop, name="memory-embed",
                                            daemon=True)
            self._worker.start()
        self._wake.set()  # chunks left pending by the last run, or by a model switch

    def _build_catalog(self) -> ChunkCatalog:
        catalog = ChunkCatalog()
        for chunk_id, seq, memory_type, importance, conversation in self.store.catalog_rows():
            catalog.add([chunk_id], seq, MemoryType(memory_type), MemoryImportance(importance),
                        conversation)
        return catalog

    def _insert(self, records: Sequence[MemoryRecord], spans: Sequence[Sequence[chunking.Span]],
                vectors: np.ndarray | None = None, model: str | None = None) -> list[int]:
        """Store records and their chunks, catalogued; returns every chunk id, in order."""
        stored = self.store.insert_many(records, spans, vectors, model)
        for record, (seq, chunk_ids) in zip(records, stored, strict=True):
            self._catalog.add(chunk_ids, seq, record.memory_type, record.importance,
                              record.conversation_id)
        return [chunk_id for _, chunk_ids in stored for chunk_id in chunk_ids]

    def _build(self, embedder: Embedder) -> VectorIndex:
        model = embedder.embedding_model_id
        index = VectorIndex(embedder.embedding_dim,
                            index_kind(self.kind, self.store.count_embedded(model)))
        for ids, vectors in self.store.iter_embeddings(model):
            index.add(ids, vectors)
        return index

    def _index_stored(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index vectors SQLite already holds (under the lock: the index may have been
        replaced since the caller looked); under AUTO, an index that outgrows flat is
        built again as HNSW, from SQLite."""
        embedder, index = self._require()
        index.add(ids, vectors)
        wanted = index_kind(self.kind, index.ntotal - index.stale)
        if index.kind is not wanted:
            log.info("memory: %d chunks: moving the index to %s", index.ntotal, wanted)
            self._index = self._build(embedder)

    def rebuild_index(self) -> None:
        """Throw the index away and derive it again from SQLite."""
        embedder, _ = self._require()
        with self._lock:
            self._index = self._build(embedder)

    def flush(self) -> MemoryFlushResponse:
        """Record accesses, purge expired memories, checkpoint SQLite, write the index."""
        self.record_accesses()
        with self._lock:
            purged = self.store.purge_expired()
            self._catalog.remove(purged)
            rebuilt = False
            if self._index is not None and self._embedder is not None:
                self._index.remove(purged)
                if self._index.stale:  # HNSW keeps deleted vectors until rebuilt
                    self._index = self._build(self._embedder)
                    rebuilt = True
                self._index.save(self.index_path, self.store.generation,
                                 self._embedder.embedding_model_id)
            self.store.checkpoint()
            return MemoryFlushResponse(
                memories=self.store.count(),
                index_size=self.index_size,
                expired_purged=len(purged),
                index_rebuilt=rebuilt,
            )

    def _embed_loop(self) -> None:
        # Ends with close(), or when the store was closed under it (a crash, in tests).
        while not self._closing and not self.store.closed:
            self._wake.wait(timeout=TOUCH_EVERY_S)
            self._wake.clear()
            try:
                self.record_accesses()
                while not self._closing and self.embed_pending(BACKGROUND_BATCH):
                    pass
            except Exception:
                if self.store.closed:
                    return
                log.exception("embedding pending memories failed; retrying in %.0f s",
                              RETRY_AFTER_S)
                time.sleep(RETRY_AFTER_S)
                self._wake.set()

    def record_accesses(self) -> None:
        """Write the accesses searches noted (retention counts from the last use)."""
        with self._lock:
            accessed, self._accessed = self._accessed, {}
        if accessed:
            self.store.touch(accessed)

    def embed_pending(self, limit: int) -> int:
        """Embed up to ``limit`` chunks stored without a vector and index them.

        The embedding runs outside the lock (searches and adds go on); a chunk whose
        memory was deleted meanwhile is skipped. Returns how many were embedded.
        """
        embedder, _ = self._require()
        todo = self.store.pending_chunks(limit)
        if not todo:
            return 0
        vectors = embedder.embed([c.text for c in todo], truncate=True).vectors
        with self._lock:
            ids = [c.chunk_id for c in todo]
            filled = set(self.store.fill_embeddings(ids, vectors, embedder.embedding_model_id))
            keep = [i for i, chunk_id in enumerate(ids) if chunk_id in filled]
            if keep:
                self._index_stored(np.asarray([ids[i] for i in keep], dtype=np.int64),
                                   vectors[keep])
        return len(todo)

    def close(self) -> None:
        """Make memory durable and close the database; a second close does nothing."""
        if self._closing:
            return
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

        With ``background`` the vectors are computed later by the worker (see the module).
        """
        embedder, _ = self._require()
        now = time.time()
        content, redaction = self._redacted(item.content)
        item = item.model_copy(update={"content": content})
        with self._lock:
            existing = self.store.by_hash(content_hash(item.content))
            if existing is not None:
                return MemoryAddResponse(
                    memory=self._keep(existing, item.importance, now), deduplicated=True,
                    redacted=redaction.kinds,
                )
            record = new_record(item, now)
            spans = self._split(embedder, record.content)
            if background:
                self._insert([record], [spans])
                self._wake.set()
                return MemoryAddResponse(memory=record, deduplicated=False,
                                         embedding_pending=True, redacted=redaction.kinds)
            emb = embedder.embed([chunking.indexed_text(record.content, s) for s in spans],
                                 truncate=True)
            ids = self._insert([record], [spans], emb.vectors, embedder.embedding_model_id)
            self._index_stored(np.asarray(ids, dtype=np.int64), emb.vectors)
            return MemoryAddResponse(
                memory=record, deduplicated=False, embedding_truncated=any(emb.truncated),
                redacted=redaction.kinds,
            )

    def _redacted(self, content: str) -> tuple[str, Redaction]:
        """``content`` without secrets; what was taken out is reported to ``on_redaction``."""
        clean, redaction = redact(content)
        if redaction.kinds and self.on_redaction is not None:
            self.on_redaction(redaction)
        return clean, redaction

    def _redacted_record(self, record: MemoryRecord) -> MemoryRecord:
        content, redaction = self._redacted(record.content)
        if not redaction.kinds:
            return record
        return record.model_copy(update={"content": content,
                                         "content_hash": content_hash(content)})

    @staticmethod
    def _split(embedder: Embedder, text: str) -> list[chunking.Span]:
        """Chunks the embedding model reads whole, its heading included."""
        return chunking.split(text, fits=lambda t: embedder.fits_embedding(t, HEADING_TOKENS))

    def _keep(
        self, existing: StoredMemory, importance: MemoryImportance, now: float
    ) -> MemoryRecord:
        """A duplicate refreshes the original and can only raise its importance."""
        if IMPORTANCE_RANK[importance] > IMPORTANCE_RANK[existing.record.importance]:
            self.store.raise_importance(existing.seq, importance, now)
            self._catalog.set_importance(existing.seq, importance)
        self.store.touch({existing.seq: now})
        found = self.store.by_hash(existing.record.content_hash)
        return (found or existing).record

    def add_records(
        self, records: Sequence[MemoryRecord], vectors: np.ndarray | None = None
    ) -> tuple[int, int]:
        """Bulk insert (import, benchmarks); embeds unless ``vectors`` are given.

        Returns (inserted, deduplicated). Records keep their ids and timestamps; secrets
        are redacted from their content, as in ``add``. Given ``vectors`` (one per record)
        every record must fit one chunk.
        """
        embedder, _ = self._require()
        records = [self._redacted_record(r) for r in records]
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
            spans = [self._split(embedder, r.content) for r in chosen]
            if vectors is None:
                texts = [chunking.indexed_text(r.content, s)
                         for r, parts in zip(chosen, spans, strict=True) for s in parts]
                vecs = embedder.embed(texts, truncate=True).vectors
            elif any(len(parts) > 1 for parts in spans):
                raise ValueError("records given with one vector each must fit one chunk")
            else:
                vecs = vectors[fresh]
            ids = self._insert(chosen, spans, vecs, embedder.embedding_model_id)
            self._index_stored(np.asarray(ids, dtype=np.int64), vecs)
            return len(chosen), len(records) - len(chosen)

    def delete(self, memory_id: str) -> None:
        with self._lock:
            chunk_ids = self.store.delete(memory_id)
            if chunk_ids is None:
                raise MemoryNotFound(memory_id)
            self._catalog.remove(chunk_ids)
            if self._index is not None:
                self._index.remove(chunk_ids)

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
        """The memories that best answer ``request.query``, filtered (see the module)."""
        embedder, _ = self._require()
        wanted = SearchFilter(
            memory_types=frozenset(request.memory_types) if request.memory_types else None,
            min_importance=request.min_importance,
            conversation_id=request.conversation_id,
            exclude_ids=frozenset(exclude_ids),
        )
        vector = None
        if request.mode is not RetrievalMode.KEYWORD:
            vector = embedder.embed([request.query], truncate=True).vectors[0]
        words = None if request.mode is RetrievalMode.VECTOR else request.query
        return self.search_ranked(vector, words, request.top_k, wanted,
                                  request.chunks_per_memory)

    def search_vector(self, vector: np.ndarray, top_k: int, wanted: SearchFilter
                      ) -> list[MemoryHit]:
        """Nearest memories to an embedded query (the vector retriever alone)."""
        return self.search_ranked(vector, None, top_k, wanted)

    def search_ranked(self, vector: np.ndarray | None, words: str | None, top_k: int,
                      wanted: SearchFilter, chunks_per_memory: int = 1) -> list[MemoryHit]:
        """Rank by the vector, the words, or both fused; ``top_k`` hits, best first."""
        _, index = self._require()
        now = time.time()
        fused = vector is not None and words is not None
        # Room for a memory's further chunks, near-duplicates and expired memories to drop
        # out; a fused ranking also needs depth from each list.
        want = top_k * 2 * chunks_per_memory
        want = max(want, CANDIDATES) if fused else want
        with self._lock:
            only = self._catalog.select(wanted.memory_types, wanted.min_importance,
                                        wanted.conversation_id)
            by_vector = by_words = []
            if vector is not None:
                by_vector = self._accepted(self._nearest(index, vector, want, only), wanted, now)
            if words is not None:
                by_words = self._accepted(self._matching(words, want, only), wanted, now)
        if fused:
            ranked = ranking.fuse(by_vector, by_words, now)
        else:
            ranked = ranking.single(by_vector or by_words, vector is not None, now)
        return self._hits(ranking.per_memory(ranked, chunks_per_memory), top_k, now)

    def _nearest(self, index: VectorIndex, vector: np.ndarray, want: int,
                 only: np.ndarray | None) -> list[tuple[int, float]]:
        """Chunk ids by cosine, among those ``only`` selects (None: all)."""
        scored = index.search(vector, want + index.stale, only)  # HNSW keeps deleted ids
        return [(c, score) for c, score in scored if self._catalog.has(c)][:want]

    def _matching(self, words: str, want: int, only: np.ndarray | None
                  ) -> list[tuple[int, float]]:
        """Chunk ids by BM25, among those ``only`` selects; over-fetches until ``want``."""
        fetch = want
        while True:
            scored = self.store.keyword_search(words, fetch)
            hits = [(c, score) for c, score in scored
                    if only is None or (c < len(only) and only[c])]
            if len(hits) >= want or len(scored) < fetch:
                return hits[:want]
            fetch *= 4

    def _accepted(self, scored: list[tuple[int, float]], wanted: SearchFilter, now: float
                  ) -> list[tuple[LocatedChunk, float]]:
        """The candidates located, without expired or excluded memories."""
        located = self.store.locate([chunk_id for chunk_id, _ in scored])
        return [(located[c], score) for c, score in scored
                if c in located and wanted.accepts(located[c], now)]

    def _hits(self, ranked: list[ranking.Ranked], top_k: int, now: float) -> list[MemoryHit]:
        """The first ``top_k`` of ``ranked`` as hits, near-duplicates collapsed."""
        candidates = ranked[: top_k * 2]
        rows = self.store.by_seqs([r.chunk.memory_seq for r in candidates])
        candidates = [r for r in candidates if r.chunk.memory_seq in rows]  # deleted meanwhile
        texts = [rows[r.chunk.memory_seq].record.content[r.chunk.start : r.chunk.end]
                 for r in candidates]
        kept = ranking.collapse_near_duplicates(texts, top_k)
        self._accessed.update((candidates[i].chunk.memory_seq, now) for i in kept)
        return [
            MemoryHit(
                memory=rows[candidates[i].chunk.memory_seq].record,
                score=candidates[i].score,
                similarity=candidates[i].similarity,
                keyword_score=candidates[i].keyword_score,
                chunk=MemoryChunk(position=candidates[i].chunk.position,
                                  start=candidates[i].chunk.start, end=candidates[i].chunk.end,
                                  text=texts[i]),
            )
            for i in kept
        ]

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
