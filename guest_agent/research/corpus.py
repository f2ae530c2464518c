"""The research corpus: the documents a run searches and quotes, indexed in the VM.

Its own ``MemoryManager`` (database and FAISS index under ``research/corpus``, apart from
the chat memory), one memory per document: content = the document's extracted text,
type DOCUMENT, metadata {ref, title, format, kind, doc_id}; a document's id is its
memory's id. Search is memory's hybrid search, up to two chunks per document.

What is stored is what is quoted: memory redacts secrets before storing, so ``text``
returns the stored content, and citations are checked against that, never against the
text as sent.

Two rules from memory's deduplication (by content hash):
- the same ref added again replaces its document (deleted, then added; ``replaced``);
  with the same text and title it is kept as it is (no embedding again);
- a document whose text is already in the corpus under another ref *is* that document:
  the add returns it, under its first ref (a page reached by two URLs is one source).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from guest_agent.memory.manager import (
    Embedder,
    MemoryManager,
    MemoryNotFound,
    MemoryNotReady,
    content_hash,
)
from guest_agent.memory.store import StoredMemory
from guest_agent.protocol import (
    MemoryCreate,
    MemoryImportance,
    MemoryRecord,
    MemorySearchRequest,
    MemoryType,
)
from guest_agent.protocol.redaction import redact
from guest_agent.protocol.research import (
    MAX_DOCUMENT_BYTES,
    CorpusDocument,
    CorpusDocumentIn,
    DocumentFormat,
    SourceKind,
)
from guest_agent.protocol.security import Redaction
from guest_agent.research.pipeline import Passage
from guest_agent.research.text import UnreadableDocument, extract_text

CORPUS_DIR = Path("research") / "corpus"
CHUNKS_PER_DOCUMENT = 2  # a long document may answer with two separate passages
# CRITICAL, not HIGH: memory expires a HIGH memory a year after its last use, and a
# corpus document must stay until the user removes it.
DOCUMENT_IMPORTANCE = MemoryImportance.CRITICAL
PAGE = 500


class DocumentNotFound(KeyError):
    """No corpus document has that id."""


class Corpus:
    """The corpus documents (``CorpusSearch`` for the research pipeline)."""

    def __init__(self, data_dir: Path,
                 on_redaction: Callable[[Redaction], None] | None = None) -> None:
        self.memory = MemoryManager(data_dir / CORPUS_DIR, on_redaction=on_redaction)
        # One add or remove at a time: "replace the document with this ref" is two steps.
        self._lock = threading.RLock()
        self._by_ref: dict[str, str] = {}  # ref -> doc_id
        for stored in self._all():
            if isinstance(ref := stored.record.metadata.get("ref"), str):
                self._by_ref[ref] = stored.record.memory_id

    @property
    def ready(self) -> bool:
        return self.memory.ready

    def attach(self, embedder: Embedder) -> None:
        """Bind the model's embedder (at boot, once it is loaded): add and search need it."""
        self.memory.attach(embedder)

    def close(self) -> None:
        self.memory.close()

    def _all(self) -> list[StoredMemory]:
        found: list[StoredMemory] = []
        while True:
            rows, _ = self.memory.store.page(len(found), PAGE, MemoryType.DOCUMENT)
            found.extend(rows)
            if len(rows) < PAGE:
                return found

    # -- reads ------------------------------------------------------------------------------

    def list(self) -> list[CorpusDocument]:
        """Every document, oldest first."""
        return [_document(m.record) for m in self._all()]

    def get(self, doc_id: str) -> CorpusDocument:
        return _document(self._record(doc_id))

    def _record(self, doc_id: str) -> MemoryRecord:
        try:
            return self.memory.get_memory_by_id(doc_id)
        except MemoryNotFound:
            raise DocumentNotFound(f"no corpus document '{doc_id}': 'somnus research "
                                   f"corpus list' shows them") from None

    def text(self, doc_id: str) -> str:
        """The document's stored text: what quotes are taken from and checked against."""
        return self._record(doc_id).content

    def find_ref(self, ref: str) -> CorpusDocument | None:
        with self._lock:
            doc_id = self._by_ref.get(ref)
        if doc_id is None:
            return None
        try:
            return self.get(doc_id)
        except DocumentNotFound:  # removed under us
            return None

    def search(self, query: str, top_k: int) -> builtins.list[Passage]:
        """The passages that best answer ``query`` (hybrid: meaning and words), best first."""
        if not query.strip() or top_k < 1:
            return []
        hits = self.memory.search(MemorySearchRequest(
            query=query, top_k=min(top_k, 200), memory_types=[MemoryType.DOCUMENT],
            chunks_per_memory=CHUNKS_PER_DOCUMENT))
        passages = []
        for hit in hits:
            doc = _document(hit.memory)
            chunk = hit.chunk
            start, end = (chunk.start, chunk.end) if chunk else (0, len(hit.memory.content))
            passages.append(Passage(doc_id=doc.doc_id, ref=doc.ref, title=doc.title,
                                    kind=doc.kind, text=hit.memory.content[start:end],
                                    start=start, end=end, score=hit.score))
        return passages

    # -- writes -----------------------------------------------------------------------------

    def add(self, doc: CorpusDocumentIn) -> CorpusDocument:
        """Extract the document's text and index it (embedded before this returns: a run
        searches right after). Raises ``UnreadableDocument`` (too large, not base64, no
        text) and ``MemoryNotReady`` (the model is loading)."""
        raw = _decode(doc.content_b64, doc.ref)
        text, found_title = extract_text(raw, doc.format, name=doc.ref)
        if not self.memory.ready:  # before the old version is removed
            raise MemoryNotReady("the corpus is not ready (model loading)")
        title = (doc.title or found_title or _name_of(doc.ref)).strip()[:500]
        with self._lock:
            old = self.find_ref(doc.ref)
            if old is not None and old.title == title and (
                    self._record(old.doc_id).content_hash == content_hash(redact(text)[0])):
                return old.model_copy(update={"replaced": True})
            if old is not None:
                self.remove(old.doc_id)
            added = self.memory.add(MemoryCreate(
                content=text, memory_type=MemoryType.DOCUMENT, importance=DOCUMENT_IMPORTANCE,
                tags=["research", doc.kind.value],
                metadata={"ref": doc.ref, "title": title, "format": doc.format.value,
                          "kind": doc.kind.value}))
            record = added.memory
            if added.deduplicated:  # the same text under another ref: that document
                return _document(record)
            self._by_ref[doc.ref] = record.memory_id
            return _document(record).model_copy(update={"replaced": old is not None})

    def remove(self, doc_id: str) -> CorpusDocument:
        """Remove a document (raises ``DocumentNotFound``)."""
        with self._lock:
            doc = self.get(doc_id)
            self.memory.delete(doc_id)
            if self._by_ref.get(doc.ref) == doc_id:
                del self._by_ref[doc.ref]
            return doc


def _decode(content_b64: str, ref: str) -> bytes:
    # Checked before decoding as well: the field's own limit is only the base64 length.
    if len(content_b64) > (MAX_DOCUMENT_BYTES * 4) // 3 + 4:
        raise UnreadableDocument(f"{ref} is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
    try:
        raw = base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UnreadableDocument(f"{ref}: content_b64 is not base64") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise UnreadableDocument(f"{ref} is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
    return raw


def _name_of(ref: str) -> str:
    """A title for a document that has none: its file name, or its URL's host and path."""
    if "://" in ref:
        parts = urlsplit(ref)
        return (parts.netloc + parts.path).rstrip("/") or ref
    return PurePosixPath(ref).name or ref


def _document(record: MemoryRecord) -> CorpusDocument:
    meta = record.metadata
    ref = str(meta.get("ref") or record.memory_id)
    try:
        fmt = DocumentFormat(str(meta.get("format")))
    except ValueError:
        fmt = DocumentFormat.TEXT
    try:
        kind = SourceKind(str(meta.get("kind")))
    except ValueError:
        kind = SourceKind.CORPUS
    return CorpusDocument(doc_id=record.memory_id, ref=ref,
                          title=str(meta.get("title") or _name_of(ref)), format=fmt, kind=kind,
                          chars=len(record.content), added_at=record.created_at)
