"""What TCG guests run instead of the wheel's llama.cpp: a no-SIMD CPU backend, models to match.

Both are made on the host when the image is built, cached together in
``<wheels>/emulation-<key>/`` (the key names the llama wheel, the flags and the model pin),
and installed in the image's ``EMULATION_DIR``; the agent loads them only under TCG
(``guest_agent.llama_build``):

* ``libggml-cpu.so.0``: ggml's CPU backend alone, compiled from the same
  llama-cpp-python sdist as the portable wheel with every x86 extension off (~25 s on
  2 cores). The rest of the wheel (libggml-base, libllama) is shared with it.
* the bundled SmolLM2 re-quantized to Q4_0, every tensor (``--pure``), and the converted
  MiniLM (``images.embedder``) to Q8_0, through llama.cpp's own quantize API.

Why: TCG emulates each SSE/AVX instruction through a helper call, while plain integer
code translates to a few host instructions. In one TCG VM (30-token prompt, greedy) the
no-SIMD backend with Q4_0 evaluated the prompt 2.9x and decoded 3.5x as fast as the
wheel with the shipped Q4_1; SSE4.2 alone was slower than no SIMD, and Q8_0 slower
than Q4_0. The price is quality: Q4_0 made from Q4_1 raises SmolLM2's perplexity on a
page of the Python tutorial from 11.3 to 14.1. MiniLM in Q8_0 embeds a query in 2.9 s
there against 13.6 s in F32 on the wheel's backend, its vectors within a cosine of 0.9995
of the F32 model's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from core.config import Settings
from core.errors import ImageBuildError
from guest_agent.protocol.models_dir import (
    EMULATION_BACKEND,
    EMULATION_EMBEDDER,
    EMULATION_MODEL,
)
from images import recipe, wheels
from images.embedder import ensure_embedder
from images.plumbing import BuildLog, Progress, build_once, print_ensured

PYPI_SIMPLE = "https://pypi.org/simple"
# The cmake options llama-cpp-python's own build uses for the libraries we share with it.
_LLAMA_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)  # fmt: skip


def emulation_dir(settings: Settings, llama_sha256: str) -> Path:
    """Cache folder of the emulation backend and model for this llama wheel."""
    return settings.wheels_dir / f"emulation-{recipe.emulation_key(llama_sha256)}"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file()
               for name in (EMULATION_BACKEND, EMULATION_MODEL, EMULATION_EMBEDDER))


def ensure_emulation(
    settings: Settings, progress: Progress | None = None, log: BuildLog | None = None
) -> Path:
    """Folder with the emulation backend and model, building them only when absent."""
    llama = wheels.ensure_llama_wheel(settings, progress, log)
    final = emulation_dir(settings, wheels.file_sha256(llama))
    if _complete(final):
        return final
    log = log or BuildLog.new(settings, "emulation", progress)
    build_log = log
    embedder = ensure_embedder(settings, log=log)  # before the lock: it takes the lock too

    def build(staged: Path) -> None:
        build_log.note("emulation: compiling llama.cpp's CPU backend without SIMD (~25 s)")
        _build_backend(staged, build_log)
        build_log.note(f"emulation: quantizing the chat model to {recipe.EMULATION_MODEL_TYPE} "
                       f"and MiniLM to {recipe.EMULATION_EMBEDDER_TYPE}")
        _quantize_model(settings, staged, build_log)
        _quantize(build_log, embedder, staged / EMULATION_EMBEDDER,
                  recipe.EMULATION_EMBEDDER_TYPE)
        info = {"llama_cpp_python": wheels.LLAMA_CPP_VERSION,
                "cmake_args": recipe.EMULATION_CMAKE_ARGS,
                "model": recipe.MODEL_REQUIREMENT,
                "model_type": f"{recipe.EMULATION_MODEL_TYPE} (pure)",
                "embedder_type": recipe.EMULATION_EMBEDDER_TYPE,
                "created_at": datetime.now(UTC).isoformat()}  # fmt: skip
        (staged / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")

    build_once(final, lambda: _complete(final), build, settings.wheels_dir / ".lock")
    log.note(f"emulation: {final}")
    return final


def _build_backend(dest: Path, log: BuildLog) -> None:
    work = dest / ".build"
    work.mkdir()
    try:
        sdist = _fetch_sdist(work, log)
        log.run("emulation", ["tar", "-xzf", sdist, "-C", work])
        source = work / sdist.name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
        build = work / "cmake"
        log.run("emulation", ["cmake", "-S", source, "-B", build, *_LLAMA_CMAKE_ARGS,
                              *recipe.EMULATION_CMAKE_ARGS.split()])
        log.run("emulation", ["cmake", "--build", build, "--target", "ggml-cpu",
                              "-j", str(os.cpu_count() or 1)], heartbeat_s=30)
        shutil.copyfile(build / "bin" / EMULATION_BACKEND, dest / EMULATION_BACKEND)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_sdist(dest: Path, log: BuildLog) -> Path:
    """llama-cpp-python's sdist, checked against the index's sha256. Straight from PyPI's
    simple API (PEP 691), as pip finds it: ``pip download`` would first install the
    build backend only to read the metadata (three minutes here)."""
    name = f"llama_cpp_python-{wheels.LLAMA_CPP_VERSION}.tar.gz"
    request = urllib.request.Request(f"{PYPI_SIMPLE}/llama-cpp-python/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    path = dest / name
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            [entry] = [f for f in json.load(response)["files"] if f["filename"] == name]
        log.note(f"emulation: fetching {entry['url']}")
        with urllib.request.urlopen(entry["url"], timeout=300) as response, \
                path.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, ValueError, KeyError) as exc:
        raise ImageBuildError(f"stage 'emulation': cannot fetch {name} from PyPI ({exc}); "
                              "is the network up?") from exc
    if wheels.file_sha256(path) != entry["hashes"]["sha256"]:
        raise ImageBuildError(f"stage 'emulation': {name} does not match PyPI's sha256")
    return path


def _quantize_model(settings: Settings, dest: Path, log: BuildLog) -> None:
    model_wheel = wheels.ensure_model_wheel(settings, log=log)
    with zipfile.ZipFile(model_wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise ImageBuildError(f"stage 'emulation': {model_wheel.name} holds {len(names)} "
                                  "GGUF files, expected one")
        source = dest / Path(names[0]).name
        with archive.open(names[0]) as packed, source.open("wb") as out:
            shutil.copyfileobj(packed, out)
    try:
        _quantize(log, source, dest / EMULATION_MODEL, recipe.EMULATION_MODEL_TYPE, "--pure")
    finally:
        source.unlink()


def _quantize(log: BuildLog, source: Path, dest: Path, file_type: str, *flags: str) -> None:
    # The agent's own quantizer, in a process of its own: the host sees only the guest's
    # protocol, and llama.cpp is the host venv's (the same wheel as the guest's).
    log.run("emulation", [sys.executable, "-m", "guest_agent.quantize", source, dest,
                          file_type, *flags])


def main() -> int:
    """``python -m images.emulation``: ensure the backend and model; print their folder."""
    return print_ensured(ensure_emulation)


if __name__ == "__main__":
    sys.exit(main())
