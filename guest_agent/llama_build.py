"""Which llama.cpp CPU backend the agent loads: the wheel's, or the image's one for TCG.

The wheel's ``libggml-cpu`` is the portable AVX2/FMA build: native-fast under KVM. Under
TCG every SSE/AVX instruction is emulated through a helper call while plain integer code
translates to a few host instructions, so there a backend compiled with no SIMD at all
is faster: 3.0x the prompt evaluation and 3.9x the decode of the wheel's in the same VM
(``bench.inference --vm``). The image ships that backend (``images.emulation``) with the
models it is fastest with, in ``EMULATION_DIR``: the chat model in Q4_0 and MiniLM in
Q8_0 (a query embeds in 2.9 s there, against 13.6 s in F32 on the wheel's backend).

Choosing happens once, before anything imports ``llama_cpp``: the chosen
``libggml-cpu.so.0`` is loaded first, so when the wheel's ``libggml`` asks for that
soname the dynamic loader hands it the one already loaded. ``SOMNUS_LLAMA_BUILD``
(``portable`` or ``emulation``) overrides the choice, e.g. to measure both.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from guest_agent.protocol.models_dir import (
    EMULATION_BACKEND,
    EMULATION_DIR,
    EMULATION_MODEL,
)

log = logging.getLogger(__name__)

ENV_VAR = "SOMNUS_LLAMA_BUILD"


class LlamaBuild(StrEnum):
    PORTABLE = "portable"  # the wheel's AVX2/FMA backend
    EMULATION = "emulation"  # no SIMD: the fastest under TCG


@dataclass(frozen=True)
class Choice:
    build: LlamaBuild
    reason: str


_loaded: Choice | None = None


def virtualization() -> str:
    """``systemd-detect-virt --vm``: ``qemu`` under TCG, ``kvm`` under KVM, ``none``..."""
    try:
        done = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def choose(override: str | None, virt: str, backend_present: bool) -> Choice:
    """The build to load, and why; ``override`` is the environment's ``SOMNUS_LLAMA_BUILD``."""
    if override:
        try:
            wanted = LlamaBuild(override)
        except ValueError:
            return Choice(LlamaBuild.PORTABLE, f"{ENV_VAR}={override!r} is not one of "
                          f"{', '.join(LlamaBuild)}: using the portable build")
        if wanted is LlamaBuild.EMULATION and not backend_present:
            return Choice(LlamaBuild.PORTABLE, f"{ENV_VAR}=emulation but this machine has no "
                          "emulation backend: using the portable build")
        return Choice(wanted, f"{ENV_VAR}={wanted}")
    if virt == "qemu" and backend_present:
        return Choice(LlamaBuild.EMULATION, "TCG emulation (systemd-detect-virt: qemu)")
    return Choice(LlamaBuild.PORTABLE, f"systemd-detect-virt: {virt}")


def load(emulation_dir: Path = EMULATION_DIR) -> Choice:
    """Choose the build and load its CPU backend; call before importing ``llama_cpp``."""
    global _loaded
    if _loaded is not None:
        return _loaded
    backend = emulation_dir / EMULATION_BACKEND
    override = os.environ.get(ENV_VAR)
    virt = "" if override else virtualization()
    choice = choose(override, virt, backend.is_file())
    if choice.build is LlamaBuild.EMULATION:
        if "llama_cpp" in sys.modules:
            choice = Choice(LlamaBuild.PORTABLE, "llama_cpp was imported before the choice")
        else:
            # Its dependency first, from the wheel (the same llama.cpp source and version).
            ctypes.CDLL(str(_wheel_lib_dir() / "libggml-base.so.0"), mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(backend), mode=ctypes.RTLD_GLOBAL)
    log.info("llama.cpp build: %s (%s)", choice.build, choice.reason)
    _loaded = choice
    return choice


def loaded() -> Choice:
    """What ``load`` chose; the portable build if it never ran (the host, tests)."""
    return _loaded or Choice(LlamaBuild.PORTABLE, "no choice made: the wheel's own backend")


def emulation_model(name: str = EMULATION_MODEL, emulation_dir: Path = EMULATION_DIR
                    ) -> Path | None:
    """The image's model file ``name`` for the emulation build (``EMULATION_MODEL``, the
    chat model, or ``EMULATION_EMBEDDER``), when that build is the one loaded."""
    path = emulation_dir / name
    return path if loaded().build is LlamaBuild.EMULATION and path.is_file() else None


def _wheel_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llama_cpp is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"
