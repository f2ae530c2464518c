"""Model agent_runtime on the real SmolLM2: context from GGUF, formats, quantization, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guest_agent.protocol import AIModelConfiguration, ModelState
from guest_agent.protocol.gguf import context_length, read_metadata
from guest_agent.quantize import UnsupportedModelError, detect_format, ensure_bits, file_type_name
from guest_agent.runtime import InputTooLong, ModelRuntime, SamplingParams, default_model_path
from tests.unit.conftest import TEST_CTX, model_config

GREEDY = SamplingParams(
    temperature=0.0, top_p=1.0, top_k=0, max_tokens=12, repeat_penalty=1.0, seed=1
)


def answer(rt: ModelRuntime, question: str) -> str:
    prompt, stops = rt.render_chat([{"role": "user", "content": question}])
    params = SamplingParams(**{**GREEDY.__dict__, "stop": stops})
    return "".join(p.text for p in rt.generate(rt.prompt_tokens(prompt), params))


def test_context_window_comes_from_gguf_metadata(tmp_path: Path) -> None:
    trained = context_length(read_metadata(default_model_path()))
    assert trained == 8192  # SmolLM2-135M's llama.context_length, not a library default
    rt = ModelRuntime(AIModelConfiguration(n_threads=2), tmp_path)
    rt.load()
    status = rt.status()
    assert status.n_ctx_train == trained and status.n_ctx == trained == rt.n_ctx


def test_context_length_setting_is_capped_at_trained(tmp_path: Path) -> None:
    rt = ModelRuntime(AIModelConfiguration(context_length=100_000, n_threads=2), tmp_path)
    rt.load()
    assert rt.n_ctx == 8192


def test_session_runtime_uses_requested_window(agent_runtime: ModelRuntime) -> None:
    status = agent_runtime.status()
    assert status.state is ModelState.READY and agent_runtime.n_ctx == TEST_CTX
    assert status.file_type == "Q4_1" and status.embedding_dim == agent_runtime.embedding_dim == 384


def test_greedy_generation_is_repeatable(agent_runtime: ModelRuntime) -> None:
    first = answer(agent_runtime, "What is the capital of France?")
    assert first and answer(agent_runtime, "What is the capital of France?") == first


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("model.onnx", "onnx"),
        ("model.safetensors", "safetensors"),
        ("pytorch_model.bin", "pytorch"),
    ],
)
def test_unsupported_formats_are_refused_clearly(tmp_path: Path, name: str, fmt: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\0" * 64)
    assert detect_format(path) == fmt
    rt = ModelRuntime(model_config(model_path=str(path)), tmp_path)
    rt.load_quietly()
    assert rt.state is ModelState.ERROR
    assert rt.error is not None and f"'{fmt}' is not supported" in rt.error and "gguf" in rt.error


def test_missing_model_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="not found"):
        ensure_bits(tmp_path / "nope.gguf", 8, tmp_path)


def test_unsupported_bit_width_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="2, 3, 4, 5, 6, 8, 16, 32"):
        ensure_bits(default_model_path(), 7, tmp_path)


def test_bits_the_file_already_has_use_the_file(tmp_path: Path) -> None:
    q = ensure_bits(default_model_path(), 4, tmp_path)
    assert q.path == default_model_path() and q.file_type == "Q4_1"
    assert not list(tmp_path.iterdir())


def test_quantization_to_8_bits_loads_answers_and_is_cached(tmp_path: Path) -> None:
    cfg = model_config(quantization_enabled=True, quantization_bits=8)
    rt = ModelRuntime(cfg, tmp_path)
    rt.load()
    status = rt.status()
    assert status.file_type == "Q8_0" and status.quantized_from == str(default_model_path())
    assert status.loaded_path is not None and Path(status.loaded_path).parent == rt.quantized_dir
    assert file_type_name(Path(status.loaded_path)) == "Q8_0"
    assert answer(rt, "What is the capital of France?").strip()
    mtime = Path(status.loaded_path).stat().st_mtime_ns
    again = ensure_bits(default_model_path(), 8, rt.quantized_dir)
    assert again.reused and again.path.stat().st_mtime_ns == mtime


def test_embeddings_are_normalised_and_meaningful(agent_runtime: ModelRuntime) -> None:
    texts = ["The user's dog is named Biscuit.", "Quarterly revenue grew by 12 percent."]
    docs = agent_runtime.embed(texts, truncate=False)
    assert docs.vectors.shape == (2, 384)  # MiniLM
    assert np.allclose(np.linalg.norm(docs.vectors, axis=1), 1.0, atol=1e-4)
    query = agent_runtime.embed(["What is my dog called?"], truncate=False).vectors[0]
    scores = docs.vectors @ query
    assert scores[0] > scores[1]


def test_overlong_embedding_input_is_refused_or_reported(agent_runtime: ModelRuntime) -> None:
    long_text = "memory " * 2000
    with pytest.raises(InputTooLong):
        agent_runtime.embed([long_text], truncate=False)
    result = agent_runtime.embed([long_text, "short"], truncate=True)
    assert result.truncated == [True, False]
    assert result.token_counts[0] == agent_runtime.embedding_context


def test_generation_refuses_to_overflow_the_window(agent_runtime: ModelRuntime) -> None:
    tokens = agent_runtime.prompt_tokens("word " * (TEST_CTX - 10))
    with pytest.raises(InputTooLong, match="exceed the context window"):
        list(agent_runtime.generate(tokens, GREEDY))
