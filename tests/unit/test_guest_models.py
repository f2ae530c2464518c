"""Model files offered to a VM: GGUF accepted, anything else refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InvalidInput, NotFound
from guest_agent.runtime import default_model_path
from orchestrator.guest_models import check_gguf


def test_the_bundled_model_is_accepted() -> None:
    meta = check_gguf(default_model_path())
    assert meta["general.architecture"] == "llama"


@pytest.mark.parametrize("name", ["model.safetensors", "model.onnx", "pytorch_model.bin"])
def test_other_formats_are_refused_with_what_is_supported(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidInput, match="only GGUF files are supported") as caught:
        check_gguf(path)
    assert "\n" not in str(caught.value)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        check_gguf(tmp_path / "nope.gguf")
