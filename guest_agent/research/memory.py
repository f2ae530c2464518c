"""Research memory: finished runs' notes and reports, kept in the VM's memory, so a later
run on a related question starts from what was found before.

Each note (its summary, first quote and source) and each report's summary is one
DOCUMENT memory tagged with its run; recall searches documents and keeps only those
(the corpus's own documents and other memories do not carry ``research_run``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from guest_agent.protocol import (
    MemoryAddResponse,
    MemoryCreate,
    MemoryHit,
    MemoryImportance,
    MemorySearchRequest,
    MemoryType,
)
from guest_agent.protocol.research import ResearchReport, SourceNote

log = logging.getLogger(__name__)

RUN_KEY = "research_run"
# A hit must share words with the question, or be this close in meaning: the nearest
# memories of an unrelated question are still "nearest".
MIN_SIMILARITY = 0.5
OVERFETCH = 4  # corpus documents and other runs' memories compete for the same top_k


class MemoryStoreLike(Protocol):
    """What research memory needs from ``MemoryManager``."""

    @property
    def ready(self) -> bool: ...

    def add(self, item: MemoryCreate, background: bool = False) -> MemoryAddResponse: ...

    def search(self, request: MemorySearchRequest) -> list[MemoryHit]: ...


def note_text(note: SourceNote) -> str:
    quote = f'\n"{note.quotes[0].text}"' if note.quotes else ""
    return f"{note.summary}{quote}\n(source: {note.source.title}, {note.source.ref})"


class ResearchMemory:
    """Stores a run's findings and recalls earlier runs' findings."""

    def __init__(self, manager: MemoryStoreLike) -> None:
        self.manager = manager

    def store(self, report: ResearchReport, notes: list[SourceNote]) -> int:
        """Remember the run's notes and report summary; returns how many were stored
        (0 while memory is not ready). Embedding happens in the background."""
        if not self.manager.ready:
            return 0
        run = report.run_id
        items = [(note_text(n), "note", n.source.ref) for n in notes if n.summary.strip()]
        if report.summary.strip():
            items.append((f"{report.title}\n{report.summary}", "report", report.question))
        for content, kind, ref in items:
            self.manager.add(MemoryCreate(
                content=content, memory_type=MemoryType.DOCUMENT,
                importance=MemoryImportance.MEDIUM, tags=["research", run],
                metadata={RUN_KEY: run, "kind": kind, "source": ref}), background=True)
        return len(items)

    def recall(self, question: str, top_k: int = 4,
               exclude_run: str | None = None) -> list[MemoryHit]:
        """Earlier runs' memories relevant to ``question`` (none of ``exclude_run``'s)."""
        if not self.manager.ready or top_k <= 0 or not question.strip():
            return []
        hits = self.manager.search(MemorySearchRequest(
            query=question, top_k=min(200, top_k * OVERFETCH),
            memory_types=[MemoryType.DOCUMENT]))
        kept = []
        for hit in hits:
            run = hit.memory.metadata.get(RUN_KEY)
            if not isinstance(run, str) or run == exclude_run:
                continue
            if hit.keyword_score is None and (hit.similarity or 0.0) < MIN_SIMILARITY:
                continue
            kept.append(hit)
        return kept[:top_k]
