"""Memory benchmark: retrieval quality, insert rate, search p50/p99 and recall@10.

Three parts, printed as ONE JSON line:
- ``quality``: Python's manual (``bench.pydoc``: 36 pages, 80 questions, each answered by
  one known passage) stored as memories, chunked, and searched by each retriever:
  keyword (BM25), vector and hybrid, with the embedding models side by side (MiniLM, the
  default; SmolLM2's mean-pooled states, the old default). Recall@5 and MRR@10 count a
  hit when its chunk contains the answer. SmolLM2 embeds ~25x slower, so the side-by-side
  runs on the set's tutorial pages of at most 3,100 words (12 pages, 19 questions) unless
  ``--side-by-side full``; MiniLM and keywords also run on the full set.
- ``real``: N texts embedded by the real model (MiniLM) and added
  one by one through ``MemoryManager.add`` (embed + SQLite + FAISS), then
  searched with real query embeddings.
- ``scale``: 10k and 100k memories at the model's embedding width with
  SYNTHETIC clustered unit vectors (embedding 100k texts here would take hours
  on 2 shared cores), inserted with ``add_records`` in batches of 1000, for the
  flat (exact, the default) and HNSW indexes. Recall@10 compares each against
  an exact ``faiss.IndexFlatIP`` over the same vectors; search times include
  the SQLite lookup of the hits.
Usage: python -m bench.memory [--sizes 10000 100000] [--queries 200] [--real 200]
                              [--quality full|side-by-side|none] [--side-by-side small|full]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench import pydoc, retrieval
from core.config import load_settings
from guest_agent.memory.manager import MemoryManager, SearchFilter, content_hash
from guest_agent.memory.store import expiry
from guest_agent.protocol import (
    AIModelConfiguration,
    IndexKind,
    MemoryCreate,
    MemoryImportance,
    MemoryRecord,
    MemorySearchRequest,
    MemoryType,
    RetrievalMode,
)
from guest_agent.runtime import Embeddings, ModelRuntime, default_model_path
from images.embedder import ensure_embedder

K = 10
BATCH = 1000
SIDE_BY_SIDE_WORDS = 3100
TOPICS = ["the garden", "the budget", "a trip to Lisbon", "the database migration", "dinner",
          "the quarterly report", "a bug in the parser", "the new laptop", "running shoes",
          "the team offsite", "a chess opening", "the sourdough starter"]  # fmt: skip
VERBS = ["planned", "discussed", "fixed", "postponed", "reviewed", "bought", "cancelled"]


class PrecomputedVectors:
    """Stands in for the model when the scale runs supply their own (synthetic) vectors."""

    def __init__(self, dim: int) -> None:
        self.embedding_model_id = f"synthetic-{dim}"
        self.embedding_dim = dim

    def embed(self, texts: Sequence[str], truncate: bool) -> Embeddings:
        raise RuntimeError("the scale benchmark passes vectors explicitly")

    def fits_embedding(self, text: str, spare: int = 0) -> bool:
        return True  # its texts are a few words


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"search_p50_ms": round(statistics.median(ordered), 3), "search_p99_ms": round(p99, 3)}


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return round(hits / (K * len(found)), 4)


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around shared centres: closer to real embeddings than uniform noise."""
    picks = centres[rng.integers(0, len(centres), n)]
    vectors = picks + 0.35 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def memory_type(i: int) -> MemoryType:
    """Every fourth synthetic memory is a conversation turn: the filtered searches' set."""
    return MemoryType.CONVERSATION if i % 4 == 0 else MemoryType.CORE_FACT


def records(n: int, start: int, now: float) -> list[MemoryRecord]:
    out = []
    for i in range(start, start + n):
        content = f"synthetic memory {i}"
        out.append(
            MemoryRecord(
                content=content,
                memory_type=memory_type(i),
                memory_id=uuid.uuid4().hex,
                content_hash=content_hash(content),
                created_at=now,
                last_accessed=now,
                expires_at=expiry(MemoryImportance.MEDIUM, now),
            )
        )
    return out


def scale_run(n: int, kind: IndexKind, vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="somnus-membench-") as tmp:
        memory = MemoryManager(Path(tmp), kind)
        memory.attach(PrecomputedVectors(vectors.shape[1]))
        now = time.time()
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            memory.add_records(
                records(min(BATCH, n - start), start, now), vectors[start : start + BATCH]
            )
        insert_s = time.perf_counter() - started
        plain = searches(memory, queries, vectors, SearchFilter(), np.arange(n))
        conversations = np.arange(0, n, 4)  # memory_type(i)
        only = SearchFilter(memory_types=frozenset({MemoryType.CONVERSATION}))
        filtered = searches(memory, queries, vectors, only, conversations)
        memory.store.close()
        return {
            "n": n,
            "index": kind.value,
            "vectors": "synthetic clustered",
            "insert_per_s": round(n / insert_s, 1),
            **plain,
            "filtered": {"filter": "memory_types=[conversation] (1 in 4)", **filtered},
        }


def searches(memory: MemoryManager, queries: np.ndarray, vectors: np.ndarray,
             wanted: SearchFilter, rows: np.ndarray) -> dict[str, float]:
    """Search each query; latency percentiles and recall@10 against exact search over
    the rows the filter lets through."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors[rows])
    _, positions = exact.search(queries, K)
    truth = rows[positions]
    latencies, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = memory.search_vector(q, K, wanted)
        latencies.append((time.perf_counter() - t0) * 1000)
        # "synthetic memory {i}": i is the row in ``vectors``.
        found.append([int(h.memory.content.rsplit(" ", 1)[1]) for h in hits])
    return {**percentiles(latencies), "recall_at_10": recall(found, truth)}


def real_run(runtime: ModelRuntime, n: int, n_queries: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    texts = [
        f"On day {i} we {VERBS[rng.integers(len(VERBS))]} {TOPICS[rng.integers(len(TOPICS))]} "
        f"with person {rng.integers(50)}."
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory(prefix="somnus-membench-") as tmp:
        memory = MemoryManager(Path(tmp), IndexKind.FLAT)
        memory.attach(runtime)
        started = time.perf_counter()
        for text in texts:
            memory.add(MemoryCreate(content=text))
        insert_s = time.perf_counter() - started
        queries = [f"When did we talk about {TOPICS[i % len(TOPICS)]}?" for i in range(n_queries)]
        latencies = []
        for q in queries:
            t0 = time.perf_counter()
            memory.search(MemorySearchRequest(query=q, top_k=K))
            latencies.append((time.perf_counter() - t0) * 1000)
        memory.close()
    return {
        "n": n,
        "vectors": f"real ({runtime.embedding_model_id})",
        "add_per_s": round(n / insert_s, 2),
        **percentiles(latencies),
        "note": "add and search include embedding the text on the model",
    }


def quality(args: argparse.Namespace, minilm: ModelRuntime, threads: int) -> dict[str, Any]:
    """MiniLM and keywords on the full set; the side-by-side with SmolLM2 (see the module)."""
    docs = pydoc.load()
    out: dict[str, Any] = {"corpus": docs.corpus}
    if args.quality == "full":
        out["full_set"] = {"embedder": minilm.embedding_model_id,
                           **retrieval.evaluate(minilm, docs, list(RetrievalMode))}
    side = docs if args.side_by_side == "full" else retrieval.subset(docs, SIDE_BY_SIDE_WORDS)
    out["side_by_side"] = {"set": args.side_by_side,
                           minilm.embedding_model_id: retrieval.evaluate(minilm, side,
                                                                         list(RetrievalMode))}
    with tempfile.TemporaryDirectory(prefix="somnus-membench-smollm-") as tmp:
        smollm = ModelRuntime(AIModelConfiguration(
            n_threads=threads, embedding_model_path=str(default_model_path())), Path(tmp))
        smollm.load()
        out["side_by_side"][smollm.embedding_model_id + " (mean pooling)"] = retrieval.evaluate(
            smollm, side, [RetrievalMode.VECTOR, RetrievalMode.HYBRID])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--real", type=int, default=200, help="texts embedded for real (0: skip)")
    parser.add_argument("--quality", choices=["full", "side-by-side", "none"], default="full")
    parser.add_argument("--side-by-side", choices=["small", "full"], default="small")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="somnus-membench-model-") as tmp:
        runtime = ModelRuntime(AIModelConfiguration(
            n_threads=args.threads, embedding_model_path=str(ensure_embedder(load_settings()))),
            Path(tmp))
        runtime.load()
        dim = runtime.embedding_dim
        quality_result = None if args.quality == "none" else quality(args, runtime,
                                                                      args.threads)
        real = real_run(runtime, args.real, min(args.queries, 50)) if args.real else None
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    results = []
    for n in args.sizes:
        vectors = clustered(n, dim, rng, centres)
        queries = clustered(args.queries, dim, rng, centres)
        for kind in (IndexKind.FLAT, IndexKind.HNSW):
            results.append(scale_run(n, kind, vectors, queries))
    print(
        json.dumps(
            {
                "bench": "memory",
                "embedding_dim": dim,
                "k": K,
                "quality": quality_result,
                "real": real,
                "scale": results,
                "note": "scale runs use SYNTHETIC clustered vectors of the model's width; "
                "recall is against exact faiss.IndexFlatIP",
                "host_loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
