"""Memory: SQLite truth (chunks, FTS5) + FAISS index, on real MiniLM embeddings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.pydoc import DOC_ROOT, page_text
from guest_agent.memory import index as index_module
from guest_agent.memory.chunking import OVERLAP_WORDS, split
from guest_agent.memory.manager import (
    HEADING_TOKENS,
    MemoryManager,
    MemoryNotFound,
    content_hash,
    new_record,
)
from guest_agent.protocol import (
    IndexKind,
    MemoryCreate,
    MemoryImportance,
    MemorySearchRequest,
    MemoryType,
    RetrievalMode,
)
from guest_agent.runtime import Embeddings, ModelRuntime, default_model_path
from tests.unit.conftest import AUTH, model_config

FACTS = {
    "dog": "The user's dog is named Biscuit.",
    "deadline": "The project deadline is the end of March.",
    "paris": "Paris is the capital of France.",
    "python": "The user prefers Python over JavaScript for scripting.",
    "revenue": "Quarterly revenue grew by 12 percent.",
}
QUERIES = {
    "dog": "What is my dog called?",
    "deadline": "When is the project due?",
    "python": "Which language do I like for scripts?",
    "revenue": "How much did revenue increase?",
    "paris": "capital city of France",
}


def open_memory(
    path: Path, agent_runtime: ModelRuntime, kind: IndexKind = IndexKind.FLAT
) -> MemoryManager:
    memory = MemoryManager(path, kind)
    memory.attach(agent_runtime)
    return memory


def fill(memory: MemoryManager) -> dict[str, str]:
    ids = {}
    for key, text in FACTS.items():
        ids[key] = memory.add(MemoryCreate(content=text)).memory.memory_id
    return ids


def top(memory: MemoryManager, query: str, **kw: object) -> str | None:
    hits = memory.search(MemorySearchRequest(query=query, top_k=1, **kw))  # type: ignore[arg-type]
    return hits[0].memory.memory_id if hits else None


@pytest.mark.parametrize("kind", [IndexKind.FLAT, IndexKind.HNSW])
def test_search_finds_by_meaning(
    tmp_path: Path, agent_runtime: ModelRuntime, kind: IndexKind
) -> None:
    memory = open_memory(tmp_path, agent_runtime, kind)
    ids = fill(memory)
    for key, query in QUERIES.items():
        assert top(memory, query) == ids[key], query


def test_auto_index_turns_hnsw_when_memory_outgrows_flat(
    tmp_path: Path, agent_runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "AUTO_HNSW_CHUNKS", len(FACTS))
    memory = open_memory(tmp_path, agent_runtime, IndexKind.AUTO)
    ids = {}
    for n, (key, text) in enumerate(FACTS.items(), start=1):
        ids[key] = memory.add(MemoryCreate(content=text)).memory.memory_id
        assert memory.index_kind is (IndexKind.HNSW if n == len(FACTS) else IndexKind.FLAT)
    assert memory.index_size == len(FACTS)  # rebuilt from SQLite: nothing lost on the way
    for key, query in QUERIES.items():
        assert top(memory, query) == ids[key], query
    memory.close()
    again = open_memory(tmp_path, agent_runtime, IndexKind.AUTO)
    assert again.index_kind is IndexKind.HNSW and not again.rebuilt_on_attach
    again.delete(ids["dog"])
    again.flush()  # HNSW's deleted vector is dropped by a rebuild, and flat suffices again
    assert again.index_kind is IndexKind.FLAT and again.index_size == len(FACTS) - 1


def test_get_by_id_and_dedup(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    first = memory.add(
        MemoryCreate(content="Biscuit  is the dog.", importance=MemoryImportance.LOW)
    )
    again = memory.add(
        MemoryCreate(content=" Biscuit is the dog. ", importance=MemoryImportance.HIGH)
    )
    assert not first.deduplicated and again.deduplicated
    assert again.memory.memory_id == first.memory.memory_id
    stored = memory.get_memory_by_id(first.memory.memory_id)
    assert stored.importance is MemoryImportance.HIGH  # a duplicate may raise importance
    assert stored.content_hash == content_hash("Biscuit is the dog.")
    assert memory.store.count() == 1 and memory.index_size == 1
    with pytest.raises(MemoryNotFound):
        memory.get_memory_by_id("no-such-id")


def test_type_and_importance_filters(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    doc = memory.add(MemoryCreate(content=FACTS["dog"], memory_type=MemoryType.DOCUMENT))
    note = memory.add(
        MemoryCreate(
            content="Biscuit the dog likes long walks.",
            memory_type=MemoryType.CORE_FACT,
            importance=MemoryImportance.CRITICAL,
        )
    )
    others = {
        key: memory.add(MemoryCreate(content=FACTS[key], memory_type=MemoryType.CONVERSATION))
        for key in ("deadline", "python", "revenue")
    }
    query = QUERIES["dog"]
    assert top(memory, query, memory_types=[MemoryType.CORE_FACT]) == note.memory.memory_id
    assert top(memory, query, memory_types=[MemoryType.DOCUMENT]) == doc.memory.memory_id
    assert top(memory, query, min_importance=MemoryImportance.CRITICAL) == note.memory.memory_id
    revenue = top(memory, QUERIES["revenue"], memory_types=[MemoryType.CONVERSATION])
    assert revenue == others["revenue"].memory.memory_id
    assert top(memory, query, memory_types=[MemoryType.DEV_SESSION]) is None


def test_survives_restart_and_reuses_saved_index(
    tmp_path: Path, agent_runtime: ModelRuntime
) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    ids = fill(memory)
    memory.close()  # flushes: index written, WAL checkpointed
    memory.close()  # a second close (an agent closing what its parts closed) does nothing
    again = open_memory(tmp_path, agent_runtime)
    assert not again.rebuilt_on_attach
    assert again.get_memory_by_id(ids["dog"]).content == FACTS["dog"]
    assert top(again, QUERIES["deadline"]) == ids["deadline"]


@pytest.mark.parametrize("damage", ["delete", "corrupt", "stale"])
def test_index_rebuilt_from_sqlite(
    tmp_path: Path, agent_runtime: ModelRuntime, damage: str
) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    ids = fill(memory)
    memory.flush()
    if damage == "delete":
        memory.index_path.unlink()
    elif damage == "corrupt":
        memory.index_path.write_bytes(b"not a faiss index" * 10)
    else:  # written after the last flush, then the agent died: the saved index is behind
        ids["late"] = memory.add(
            MemoryCreate(content="The boat is painted green.")
        ).memory.memory_id
    memory.store.close()  # no flush: simulates a crash
    again = open_memory(tmp_path, agent_runtime)
    assert again.rebuilt_on_attach
    assert again.index_size == len(ids)
    assert top(again, QUERIES["python"]) == ids["python"]
    if damage == "stale":
        assert top(again, "What colour is the boat?") == ids["late"]


def test_delete_and_retention(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    ids = fill(memory)
    memory.delete(ids["dog"])
    assert top(memory, QUERIES["dog"]) != ids["dog"]
    old = time.time() - 2 * 86400  # a temporary memory lives 1 day after its last use
    stale = new_record(
        MemoryCreate(content="Scratch value 41.", importance=MemoryImportance.TEMPORARY), old
    )
    kept = new_record(MemoryCreate(content="Core rule.", importance=MemoryImportance.CRITICAL), old)
    assert (
        kept.expires_at is None and stale.expires_at is not None and stale.expires_at < time.time()
    )
    assert memory.add_records([stale, kept]) == (2, 0)
    assert memory.flush().expired_purged == 1
    with pytest.raises(MemoryNotFound):
        memory.get_memory_by_id(stale.memory_id)
    assert memory.get_memory_by_id(kept.memory_id).content == "Core rule."


def test_export_import_round_trip(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    source = open_memory(tmp_path / "a", agent_runtime)
    ids = fill(source)
    lines = list(source.export_lines())
    assert len(lines) == len(FACTS) and all(json.loads(line)["memory_id"] for line in lines)
    target = open_memory(tmp_path / "b", agent_runtime)
    result = target.import_lines(lines)
    assert (result.imported, result.deduplicated) == (len(FACTS), 0)
    assert target.get_memory_by_id(ids["dog"]).content == FACTS["dog"]  # ids survive the trip
    assert top(target, QUERIES["revenue"]) == ids["revenue"]
    again = target.import_lines(lines)
    assert (again.imported, again.deduplicated) == (0, len(FACTS))
    with pytest.raises(ValueError, match="line 1"):
        target.import_lines(['{"content": "no id"}'])


def test_memory_endpoints(agent_client: TestClient) -> None:
    r = agent_client.post(
        "/memory", json={"content": FACTS["dog"], "memory_type": "core_fact"}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    memory_id = r.json()["memory"]["memory_id"]
    assert agent_client.post("/memory", json={"content": FACTS["dog"]}, headers=AUTH).json()[
        "deduplicated"
    ]
    for text in list(FACTS.values())[1:]:
        agent_client.post("/memory", json={"content": text}, headers=AUTH)
    got = agent_client.get(f"/memory/{memory_id}", headers=AUTH).json()
    assert got["content"] == FACTS["dog"] and got["memory_type"] == "core_fact"
    hits = agent_client.post(
        "/memory/search", json={"query": QUERIES["dog"], "top_k": 3}, headers=AUTH
    )
    assert hits.json()["hits"][0]["memory"]["memory_id"] == memory_id
    listed = agent_client.get("/memory", params={"limit": 2}, headers=AUTH).json()
    assert listed["total"] == len(FACTS) and len(listed["memories"]) == 2
    exported = agent_client.get("/memory/export", headers=AUTH)
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    assert len(exported.text.splitlines()) == len(FACTS)
    imported = agent_client.post("/memory/import", content=exported.text, headers=AUTH).json()
    assert imported == {"imported": 0, "deduplicated": len(FACTS)}
    assert agent_client.post("/memory/import", content="{bad", headers=AUTH).status_code == 400
    flushed = agent_client.post("/memory/flush", headers=AUTH).json()
    assert flushed["memories"] == flushed["index_size"] == len(FACTS)
    assert agent_client.delete(f"/memory/{memory_id}", headers=AUTH).json()["deleted"]
    assert agent_client.get(f"/memory/{memory_id}", headers=AUTH).status_code == 404
    assert agent_client.delete(f"/memory/{memory_id}", headers=AUTH).status_code == 404


def wait_embedded(memory: MemoryManager, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while memory.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert memory.pending == 0, "the background worker left memories unembedded"


def test_background_add_is_listed_at_once_and_found_once_embedded(
    tmp_path: Path, agent_runtime: ModelRuntime
) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    added = memory.add(MemoryCreate(content=FACTS["dog"]), background=True)
    assert added.embedding_pending and not added.deduplicated
    assert memory.get_memory_by_id(added.memory.memory_id).content == FACTS["dog"]
    again = memory.add(MemoryCreate(content=FACTS["dog"]), background=True)
    assert again.deduplicated and not again.embedding_pending
    wait_embedded(memory)
    assert memory.index_size == 1
    assert top(memory, QUERIES["dog"]) == added.memory.memory_id
    memory.close()


def test_pending_memories_are_embedded_after_a_restart(
    tmp_path: Path, agent_runtime: ModelRuntime
) -> None:
    memory = MemoryManager(tmp_path)
    # Stored before the agent died, never embedded: what a crash mid-import leaves.
    record = new_record(MemoryCreate(content=FACTS["paris"]), time.time())
    memory.store.insert_many([record], [split(record.content)])
    memory.store.close()
    again = open_memory(tmp_path, agent_runtime)
    wait_embedded(again)
    assert top(again, QUERIES["paris"]) is not None
    again.close()


def test_a_memory_deleted_while_it_is_being_embedded_is_not_indexed(
    tmp_path: Path, agent_runtime: ModelRuntime
) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    # This test drives the batch itself: the worker is stopped first.
    memory._closing = True
    memory._wake.set()
    assert memory._worker is not None
    memory._worker.join(timeout=10)
    records = [new_record(MemoryCreate(content=text), time.time()) for text in FACTS.values()]
    memory.store.insert_many(records, [split(r.content) for r in records])

    class DeletesMidway:
        """The runtime, but the first memory is deleted while the batch is embedded."""

        embedding_model_id = agent_runtime.embedding_model_id
        embedding_dim = agent_runtime.embedding_dim

        def embed(self, texts: list[str], truncate: bool) -> Embeddings:
            if memory.store.by_id(records[0].memory_id) is not None:
                memory.delete(records[0].memory_id)
            return agent_runtime.embed(texts, truncate)

    memory._embedder = DeletesMidway()
    assert memory.embed_pending(len(records)) == len(records)
    assert memory.pending == 0 and memory.index_size == len(records) - 1
    hits = memory.search(MemorySearchRequest(query=QUERIES["dog"], top_k=len(records)))
    assert records[0].memory_id not in {h.memory.memory_id for h in hits}
    memory.close()


def test_background_endpoint_and_pending_count(agent_client: TestClient) -> None:
    r = agent_client.post("/memory", params={"background": "true"},
                          json={"content": FACTS["revenue"]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["embedding_pending"], r.text
    deadline = time.monotonic() + 60
    while agent_client.get("/memory", headers=AUTH).json()["pending_embeddings"]:
        assert time.monotonic() < deadline, "still pending after 60 s"
        time.sleep(0.05)
    hits = agent_client.post("/memory/search", json={"query": QUERIES["revenue"], "top_k": 1},
                             headers=AUTH).json()["hits"]
    assert hits[0]["memory"]["content"] == FACTS["revenue"]


def test_import_keeps_a_line_separator_inside_a_memory(agent_client: TestClient) -> None:
    text = "Two lines\u2028in one memory\x85and a next-line mark."
    agent_client.post("/memory", json={"content": text}, headers=AUTH)
    exported = agent_client.get("/memory/export", headers=AUTH).text
    imported = agent_client.post("/memory/import", content=exported, headers=AUTH)
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"imported": 0, "deduplicated": 1}


@pytest.fixture(scope="module")
def smollm_embedder(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    """A runtime that embeds with the chat model's pooled states (no MiniLM)."""
    runtime = ModelRuntime(model_config(embedding_model_path=str(default_model_path())),
                           tmp_path_factory.mktemp("smollm-embedder"))
    runtime.load()
    return runtime


def test_switching_the_embedding_model_embeds_everything_again_and_loses_nothing(
    tmp_path: Path, agent_runtime: ModelRuntime, smollm_embedder: ModelRuntime
) -> None:
    before = open_memory(tmp_path, smollm_embedder)
    ids = fill(before)
    old_model = smollm_embedder.embedding_model_id
    assert before.store.count_embedded(old_model) == len(FACTS)
    before.close()

    after = MemoryManager(tmp_path)
    after.attach(agent_runtime)  # MiniLM: the SmolLM2 vectors cannot share its index
    assert after.rebuilt_on_attach
    wait_embedded(after)
    assert after.store.count() == len(FACTS) and after.index_size == len(FACTS)
    assert after.store.count_embedded(old_model) == 0
    assert after.store.count_embedded(agent_runtime.embedding_model_id) == len(FACTS)
    for key, query in QUERIES.items():
        assert top(after, query, mode=RetrievalMode.VECTOR) == ids[key], query
    after.close()


def test_a_pending_memory_is_found_by_its_words_before_its_vector(
    tmp_path: Path, agent_runtime: ModelRuntime
) -> None:
    memory = open_memory(tmp_path, agent_runtime)
    memory._closing = True  # the worker stops: the memory stays pending
    memory._wake.set()
    assert memory._worker is not None
    memory._worker.join(timeout=10)
    added = memory.add(MemoryCreate(content=FACTS["dog"]), background=True)
    assert memory.pending == 1 and memory.index_size == 0
    assert top(memory, "Biscuit", mode=RetrievalMode.KEYWORD) == added.memory.memory_id
    assert top(memory, "what is Biscuit?") == added.memory.memory_id  # hybrid
    assert top(memory, "what is Biscuit?", mode=RetrievalMode.VECTOR) is None


def test_a_long_document_is_chunked_and_found_by_a_passage_from_its_middle(
    tmp_path: Path, agent_runtime: ModelRuntime
) -> None:
    text = page_text(DOC_ROOT / "library" / "json.html")
    spans = split(text, fits=lambda t: agent_runtime.fits_embedding(t, HEADING_TOKENS))
    assert len(spans) > 5
    memory = open_memory(tmp_path, agent_runtime)
    added = memory.add(MemoryCreate(content=text, memory_type=MemoryType.DOCUMENT))
    assert not added.embedding_truncated and memory.index_size == len(spans)
    fill(memory)
    middle = spans[len(spans) // 2]
    words = text[middle.start : middle.end].split()
    assert len(words) >= 2 * OVERLAP_WORDS + 30  # so 30 words at its centre are its alone
    passage = " ".join(words[len(words) // 2 - 15 : len(words) // 2 + 15])
    for mode in RetrievalMode:
        (hit,) = memory.search(MemorySearchRequest(query=passage, top_k=1, mode=mode))
        assert hit.memory.memory_id == added.memory.memory_id, mode
        assert hit.chunk is not None and passage in " ".join(hit.chunk.text.split()), mode
        assert hit.chunk.text == text[hit.chunk.start : hit.chunk.end]
        assert abs(hit.chunk.position - len(spans) // 2) <= 1, mode
    several = memory.search(MemorySearchRequest(query="json.dumps indent", top_k=5,
                                                chunks_per_memory=3))
    assert [h.memory.memory_id for h in several].count(added.memory.memory_id) == 3
