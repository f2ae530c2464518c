"""Choosing llama.cpp's CPU backend: the rule, and the emulation backend really loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_settings
from guest_agent.llama_build import Choice, LlamaBuild, choose
from guest_agent.protocol.models_dir import EMULATION_BACKEND, EMULATION_MODEL
from guest_agent.quantize import file_type_name
from guest_agent.quantize import main as quantize_main
from guest_agent.runtime import default_model_path
from images.emulation import ensure_emulation

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "virt", "present", "expected"),
    [
        (None, "qemu", True, LlamaBuild.EMULATION),  # TCG
        (None, "kvm", True, LlamaBuild.PORTABLE),
        (None, "none", True, LlamaBuild.PORTABLE),  # the host
        (None, "qemu", False, LlamaBuild.PORTABLE),  # an image without the backend
        ("portable", "qemu", True, LlamaBuild.PORTABLE),
        ("emulation", "kvm", True, LlamaBuild.EMULATION),
        ("emulation", "kvm", False, LlamaBuild.PORTABLE),
        ("avx512", "qemu", True, LlamaBuild.PORTABLE),
    ],
)
def test_choice_follows_the_accelerator_unless_overridden(
    override: str | None, virt: str, present: bool, expected: LlamaBuild
) -> None:
    choice = choose(override, virt, present)
    assert isinstance(choice, Choice) and choice.build is expected and choice.reason


def test_a_bad_override_says_what_is_accepted() -> None:
    reason = choose("avx512", "qemu", True).reason
    assert "'avx512'" in reason and "portable, emulation" in reason


_PROBE = """
import json, sys
from pathlib import Path
from guest_agent import llama_build
choice = llama_build.load(Path(sys.argv[1]))
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[2], n_ctx=128, n_threads=2, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
maps = {line.split()[-1] for line in open("/proc/self/maps") if "libggml-cpu" in line}
print(json.dumps({"build": choice.build, "text": out["choices"][0]["text"], "maps": sorted(maps)}))
"""


@pytest.mark.parametrize("build", ["emulation", "portable"])
def test_the_chosen_backend_is_the_one_llama_cpp_runs_on(build: str) -> None:
    """On the host for speed: the same mechanism the agent uses in a TCG guest."""
    folder = ensure_emulation(load_settings())
    env = {**os.environ, "SOMNUS_LLAMA_BUILD": build, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(folder),
                           str(folder / EMULATION_MODEL)],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["build"] == build
    assert report["text"].strip(), "the model produced nothing"
    [loaded] = report["maps"]  # exactly one CPU backend in the process
    assert (loaded == str(folder / EMULATION_BACKEND)) is (build == "emulation")


def test_the_quantize_entry_point_writes_the_type_asked(tmp_path: Path) -> None:
    """What the image build runs (``python -m guest_agent.quantize``) to make its models."""
    dest = tmp_path / "smol.q8_0.gguf"
    assert quantize_main([str(default_model_path()), str(dest), "Q8_0", "--threads", "2"]) == 0
    assert file_type_name(dest) == "Q8_0"
    assert quantize_main([str(tmp_path / "missing.gguf"), str(dest), "Q4_0"]) == 1
