"""Retrieval quality of the memory over a ``bench.pydoc`` document set.

Each page becomes one DOCUMENT memory (so the memory chunks it); each question is
searched with a retrieval mode, ten hits, up to ten chunks of one page. A hit answers the
question when its chunk holds the answer phrase. Reported per mode: recall@5 (an
answering hit among the first five) and MRR@10 (1 / rank of the first answering hit).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.pydoc import DocSet, collapse
from guest_agent.memory.manager import Embedder, MemoryManager
from guest_agent.protocol import MemoryCreate, MemorySearchRequest, MemoryType, RetrievalMode

TOP = 10


def subset(docs: DocSet, max_words: int, prefix: str = "tutorial/") -> DocSet:
    """The pages under ``prefix`` of at most ``max_words`` words, and their questions."""
    pages = {rel: text for rel, text in docs.pages.items()
             if rel.startswith(prefix) and len(text.split()) <= max_words}
    return DocSet(docs.corpus, pages, [q for q in docs.questions if q.page in pages])


def evaluate(embedder: Embedder, docs: DocSet, modes: Iterable[RetrievalMode]
             ) -> dict[str, Any]:
    """Store ``docs`` with ``embedder``; recall@5 and MRR@10 for each mode."""
    with tempfile.TemporaryDirectory(prefix="somnus-quality-") as tmp:
        memory = MemoryManager(Path(tmp))
        memory.attach(embedder)
        started = time.perf_counter()
        for rel, text in docs.pages.items():
            memory.add(MemoryCreate(content=text, memory_type=MemoryType.DOCUMENT,
                                    metadata={"path": rel}))
        result: dict[str, Any] = {
            "pages": len(docs.pages),
            "chunks": memory.index_size,
            "questions": len(docs.questions),
            "embed_s": round(time.perf_counter() - started, 1),
        }
        for mode in modes:
            result[mode.value] = score(memory, docs, mode)
        memory.close()
    return result


def score(memory: MemoryManager, docs: DocSet, mode: RetrievalMode) -> dict[str, float]:
    found_at_5 = 0
    reciprocal = 0.0
    latencies = []
    for question in docs.questions:
        started = time.perf_counter()
        hits = memory.search(MemorySearchRequest(query=question.text, top_k=TOP,
                                                 chunks_per_memory=TOP, mode=mode))
        latencies.append(time.perf_counter() - started)
        rank = next((i for i, h in enumerate(hits, start=1)
                     if h.chunk is not None and question.answer in collapse(h.chunk.text)), None)
        if rank is not None:
            found_at_5 += rank <= 5
            reciprocal += 1.0 / rank
    n = max(1, len(docs.questions))
    return {"recall_at_5": round(found_at_5 / n, 3), "mrr_at_10": round(reciprocal / n, 3),
            "search_ms_mean": round(1000 * sum(latencies) / n, 1)}
