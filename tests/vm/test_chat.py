"""Chat and memory with the agent inside a real VM, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guest_agent.protocol import PromptLayerName
from guest_agent.runtime import default_model_path
from orchestrator.vms import VMService

pytestmark = pytest.mark.vm


def somnus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
    )


def wait_model_ready(service: VMService, name: str, timeout_s: float = 300) -> None:
    service.agent(service.store.get_vm(name)).wait_model(timeout_s)


def test_a_fact_told_once_is_recalled_through_memory(booted_vm: str, service: VMService,
                                                     vm_env: dict[str, str]) -> None:
    # Inference under TCG runs at a few tokens/s: two short turns, nothing more.
    wait_model_ready(service, booted_vm)
    told = somnus(vm_env, "chat", booted_vm, "--new", "--max-tokens", "4",
                  "-m", "My favourite colour is teal.")  # streamed to stdout
    assert told.returncode == 0, told.stderr
    assert told.stdout.strip()
    assert "tokens" in told.stderr  # the per-answer report line
    first_conversation = service.store.cache(booted_vm)
    assert first_conversation is not None and "teal" in first_conversation.last_prompt

    # A new conversation: nothing in working memory, so only MEMORY can bring the fact back.
    asked = somnus(vm_env, "chat", booted_vm, "--new", "--max-tokens", "4",
                   "--temperature", "0", "-m", "Which colour do I like best?", "--json")
    assert asked.returncode == 0, asked.stderr
    second = json.loads(asked.stdout)
    assert second["choices"][0]["message"]["content"].strip()
    assert second["somnus"]["conversation_id"] != first_conversation.conversation_id
    assert second["somnus"]["memories_used"]
    layers = [layer["layer"] for layer in second["somnus"]["layers"]]
    order = [name.value for name in PromptLayerName]
    assert layers == sorted(layers, key=order.index) and layers[-1] == "user_input"

    shown = somnus(vm_env, "prompt", "show", booted_vm, "--json")
    assert shown.returncode == 0, shown.stderr
    prompt = json.loads(shown.stdout)
    recalled = " ".join(m["content"] for layer in prompt["layers"]
                        if layer["layer"] == PromptLayerName.MEMORY for m in layer["messages"])
    assert "teal" in recalled.lower()


def test_memory_add_search_export_import(booted_vm: str, vm_env: dict[str, str],
                                         service: VMService) -> None:
    added = somnus(vm_env, "memory", "add", booted_vm,
                   "The project codename is Nightingale.", "--importance", "high", "--json")
    assert added.returncode == 0, added.stderr
    # SmolLM2's mean-pooled embeddings rank loosely; the type filter makes the top hit exact.
    found = somnus(vm_env, "memory", "search", booted_vm, "What is the codename?",
                   "--type", "core_fact", "--json")
    hits = json.loads(found.stdout)["hits"]
    assert hits and "Nightingale" in hits[0]["memory"]["content"]
    assert all(hit["memory"]["memory_type"] == "core_fact" for hit in hits)

    exported = somnus(vm_env, "memory", "export", booted_vm)
    lines = exported.stdout.splitlines()
    assert any("Nightingale" in line for line in lines)
    dump = service.paths(booted_vm).root / "memories.jsonl"
    dump.write_text(exported.stdout)
    imported = somnus(vm_env, "memory", "import", booted_vm, str(dump), "--json")
    assert json.loads(imported.stdout) == {"imported": 0, "deduplicated": len(lines)}


def test_memory_survives_an_agent_restart(booted_vm: str, service: VMService,
                                          vm_env: dict[str, str]) -> None:
    assert service.run(booted_vm, "sudo systemctl restart somnus-agent").exit_code == 0
    wait_model_ready(service, booted_vm)
    found = somnus(vm_env, "memory", "search", booted_vm, "codename", "--type", "core_fact",
                   "--json")
    assert "Nightingale" in json.loads(found.stdout)["hits"][0]["memory"]["content"]


def test_model_add_copies_a_gguf_and_the_agent_serves_it(
    booted_vm: str, service: VMService, vm_env: dict[str, str], tmp_path: Path
) -> None:
    custom = tmp_path / "custom-smol.gguf"
    custom.symlink_to(default_model_path())
    added = somnus(vm_env, "model", "add", str(custom), "--vm", booted_vm, "--use", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["path"].endswith("/custom-smol.gguf")
    agent = service.agent(service.store.get_vm(booted_vm))
    assert agent.health().model == "custom-smol"
    assert "custom-smol.gguf" in [m.name for m in agent.info().models]

    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"{}" * 10)
    refused = somnus(vm_env, "model", "add", str(bogus), "--vm", booted_vm)
    assert refused.returncode == 2 and "only GGUF" in refused.stderr
