"""The embedding model: all-MiniLM-L6-v2 from PyPI, converted to GGUF by the project,
served by llama.cpp, against vectors the reference stack computed.

``tests/fixtures/minilm_reference.json`` was computed once with sentence-transformers
6.3.0 on torch 2.13.0 (CPU) from the same package's safetensors, and cross-checked with
plain transformers and its own mean pooling (max difference 6.6e-7).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import ImageBuildError
from guest_agent.runtime import ModelRuntime
from images import bert_gguf

REFERENCE = json.loads((Path(__file__).parent.parent / "fixtures" /
                        "minilm_reference.json").read_text())


def test_the_runtime_embeds_with_minilm(agent_runtime: ModelRuntime) -> None:
    assert agent_runtime.embedding_model_id == "all-MiniLM-L6-v2.f32"
    assert agent_runtime.embedding_dim == 384
    status = agent_runtime.status()
    assert status.embedding_path and status.embedding_path.endswith("all-MiniLM-L6-v2.f32.gguf")


def test_converted_model_matches_the_reference_vectors(agent_runtime: ModelRuntime) -> None:
    sentences = REFERENCE["sentences"]
    got = agent_runtime.embed([s["text"] for s in sentences], truncate=False)
    want = np.asarray([s["vector"] for s in sentences], dtype=np.float32)
    cosines = np.sum(got.vectors * want, axis=1)
    assert cosines.min() >= 0.99, dict(zip([s["text"][:20] for s in sentences],
                                           cosines.round(4).tolist(), strict=True))
    assert got.token_counts == [len(s["token_ids"]) for s in sentences]


def test_the_tokenizer_matches_wordpiece(agent_runtime: ModelRuntime) -> None:
    embedder = agent_runtime._require()[1]
    for s in REFERENCE["sentences"]:
        assert embedder.tokenize(s["text"].encode(), add_bos=True, special=False) == s["token_ids"]


def test_a_model_that_is_not_bert_is_refused(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    source = Path(agent_runtime.status().embedding_path or "")
    assert source.is_file()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ImageBuildError, match="not bert"):
        bert_gguf.convert(model_dir, tmp_path / "out.gguf", "x")
    shutil.rmtree(model_dir)
    with pytest.raises(ImageBuildError, match="cannot read"):
        bert_gguf.convert(model_dir, tmp_path / "out.gguf", "x")
