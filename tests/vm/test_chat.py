"""Chat and memory with the agent inside a real VM, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest_agent.protocol import MemoryType, PromptLayerName
from guest_agent.protocol.models_dir import (
    EMULATION_BACKEND,
    EMULATION_DIR,
    EMULATION_EMBEDDER,
    EMULATION_MODEL,
)
from guest_agent.runtime import default_model_path
from orchestrator.vms import VMService
from tests.vm.cli import somnus

pytestmark = pytest.mark.vm


def wait_model_ready(service: VMService, name: str, timeout_s: float = 300) -> None:
    service.agent(service.store.get_vm(name)).wait_model(timeout_s)


def test_a_turn_in_the_vm_streams_and_is_kept_in_memory(booted_vm: str, service: VMService,
                                                        vm_env: dict[str, str]) -> None:
    # Inference under TCG runs ~300x slower than on the host: one short turn, nothing more.
    # Recall through the MEMORY layer is driven with the real model on the host
    # (tests/unit/test_agent_chat.py); here the same agent answers through the VM's port.
    wait_model_ready(service, booted_vm)
    told = somnus(vm_env, "chat", booted_vm, "--new", "--max-tokens", "2",
                  "-m", "My favourite colour is teal.")  # streamed to stdout
    assert told.returncode == 0, told.stderr
    assert told.stdout.strip()
    assert "tokens" in told.stderr  # the per-answer report line
    conversation = service.store.cache(booted_vm)
    assert conversation is not None and "teal" in conversation.last_prompt

    shown = somnus(vm_env, "prompt", "show", booted_vm, "--json")
    assert shown.returncode == 0, shown.stderr
    layers = [layer["layer"] for layer in json.loads(shown.stdout)["layers"]]
    order = [name.value for name in PromptLayerName]
    assert layers == sorted(layers, key=order.index) and layers[-1] == "user_input"
    agent = service.agent(service.store.get_vm(booted_vm))
    turns = agent.memory_list(memory_type=MemoryType.CONVERSATION).memories
    # Earlier modules talked to this VM too (the app's chat test): this conversation's turn.
    mine = [t for t in turns if t.conversation_id == conversation.conversation_id]
    assert len(mine) == 1 and "teal" in mine[0].content


def test_a_tcg_guest_runs_the_emulation_build(booted_vm: str, service: VMService) -> None:
    """Under TCG the agent loads the no-SIMD llama.cpp backend and the Q4_0 model the
    image ships for it (guest_agent.llama_build); under KVM, the wheel's own."""
    record = service.store.get_vm(booted_vm)
    wait_model_ready(service, booted_vm)
    agent = service.agent(record)
    info, status = agent.info(), agent.model_status()
    if record.accel == "tcg":
        assert info.llama_build == "emulation", info.llama_build_reason
        assert status.loaded_path == str(EMULATION_DIR / EMULATION_MODEL)
        assert status.file_type == "Q4_0"
        assert status.embedding_path == str(EMULATION_DIR / EMULATION_EMBEDDER)
    else:
        assert info.llama_build == "portable", info.llama_build_reason
        assert status.file_type == "Q4_1"
    maps = service.run(booted_vm, "sudo grep -h libggml-cpu /proc/$(systemctl show -p MainPID "
                                  "--value somnus-agent)/maps | awk '{print $6}' | sort -u")
    expected = (str(EMULATION_DIR / EMULATION_BACKEND) if record.accel == "tcg"
                else "llama_cpp/lib/libggml-cpu.so")
    assert maps.exit_code == 0 and expected in maps.stdout, maps.stdout


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
