"""Chat and memory with the agent inside a real VM, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from guest_agent.protocol import AgentStatus, PromptLayerName
from orchestrator.errors import GuestError
from orchestrator.vms import VMService

pytestmark = pytest.mark.vm


def somnus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
    )


def wait_model_ready(service: VMService, name: str, timeout_s: float = 300) -> None:
    agent = service.agent(service.store.get_vm(name))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if agent.health().status is AgentStatus.OK:
                return
        except GuestError:
            pass
        time.sleep(1)
    raise AssertionError(f"model in {name} not ready after {timeout_s}s")


def test_a_fact_told_once_is_recalled_through_memory(booted_vm: str, service: VMService,
                                                     vm_env: dict[str, str]) -> None:
    wait_model_ready(service, booted_vm)
    told = somnus(vm_env, "chat", booted_vm, "--new", "--max-tokens", "24", "--temperature", "0",
                  "-m", "My favourite colour is teal.", "--json")
    assert told.returncode == 0, told.stderr
    first = json.loads(told.stdout)
    assert first["choices"][0]["message"]["content"].strip()
    layers = [layer["layer"] for layer in first["somnus"]["layers"]]
    order = [name.value for name in PromptLayerName]
    assert layers == sorted(layers, key=order.index) and layers[-1] == "user_input"

    # A new conversation: nothing in working memory, so only MEMORY can bring the fact back.
    asked = somnus(vm_env, "chat", booted_vm, "--new", "--max-tokens", "24",
                   "--temperature", "0", "-m", "Which colour do I like best?", "--json")
    assert asked.returncode == 0, asked.stderr
    second = json.loads(asked.stdout)
    assert second["somnus"]["conversation_id"] != first["somnus"]["conversation_id"]
    assert second["somnus"]["memories_used"]

    shown = somnus(vm_env, "prompt", "show", booted_vm, "--json")
    assert shown.returncode == 0, shown.stderr
    prompt = json.loads(shown.stdout)
    recalled = " ".join(m["content"] for layer in prompt["layers"]
                        if layer["layer"] == PromptLayerName.MEMORY for m in layer["messages"])
    assert "teal" in recalled.lower()


def test_streamed_chat_prints_the_answer(booted_vm: str, vm_env: dict[str, str]) -> None:
    result = somnus(vm_env, "chat", booted_vm, "--max-tokens", "12", "-m", "Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "tokens" in result.stderr  # the per-answer report line


def test_memory_add_search_export_import(booted_vm: str, vm_env: dict[str, str],
                                         service: VMService) -> None:
    added = somnus(vm_env, "memory", "add", booted_vm,
                   "The project codename is Nightingale.", "--importance", "high", "--json")
    assert added.returncode == 0, added.stderr
    found = somnus(vm_env, "memory", "search", booted_vm, "What is the codename?", "--json")
    hits = json.loads(found.stdout)["hits"]
    assert hits and "Nightingale" in hits[0]["memory"]["content"]

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
    found = somnus(vm_env, "memory", "search", booted_vm, "codename", "--json")
    assert "Nightingale" in json.loads(found.stdout)["hits"][0]["memory"]["content"]
