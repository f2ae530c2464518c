"""Shared agent fixtures: one real SmolLM2 agent_runtime for the whole session."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.config import load_settings
from guest_agent.app import create_app
from guest_agent.protocol import AgentConfig, AIModelConfiguration, Subsystem
from guest_agent.runtime import ModelRuntime
from images.embedder import ensure_embedder

# A small window keeps the tests fast; the model's trained window is 8192.
TEST_CTX = 512
TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def model_config(**overrides: Any) -> AIModelConfiguration:
    """The test model settings: 2 threads, the test window, greedy-friendly defaults, and
    the image's embedding model (all-MiniLM-L6-v2 as GGUF, converted once and cached)."""
    return AIModelConfiguration(**{"context_length": TEST_CTX, "n_threads": 2,
                                   "embedding_model_path": str(host_embedder()), **overrides})


@functools.cache
def host_embedder() -> Path:
    """The converted MiniLM GGUF from the build cache (``scripts/setup.sh`` makes it)."""
    return ensure_embedder(load_settings())


@pytest.fixture(scope="session")
def agent_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelRuntime]:
    rt = ModelRuntime(model_config(), Path(tmp_path_factory.mktemp("runtime")))
    rt.load()
    yield rt


def agent_config(data_dir: Path, subsystem: Subsystem = Subsystem.CHAT, **kw: Any) -> AgentConfig:
    return AgentConfig(
        vm_name="test-vm",
        subsystem=subsystem,
        token=TOKEN,
        data_dir=str(data_dir),
        model=model_config(),
        **kw,
    )


ClientFactory = Callable[..., tuple[TestClient, FastAPI]]


@pytest.fixture
def make_agent_client(agent_runtime: ModelRuntime, tmp_path: Path) -> Iterator[ClientFactory]:
    """Start agent apps on the shared agent_runtime; each boots and closes as it would in a VM."""
    opened: list[TestClient] = []

    def make(
        subsystem: Subsystem = Subsystem.CHAT, data_dir: Path | None = None, **kw: Any
    ) -> tuple[TestClient, FastAPI]:
        app = create_app(
            agent_config(data_dir or tmp_path / "agent", subsystem, **kw), agent_runtime
        )
        agent_client = TestClient(app)
        agent_client.__enter__()
        opened.append(agent_client)
        assert app.state.agent.wait_ready(60), app.state.agent.error
        return agent_client, app

    yield make
    for agent_client in reversed(opened):
        agent_client.__exit__(None, None, None)


@pytest.fixture
def agent_client(make_agent_client: ClientFactory) -> TestClient:
    return make_agent_client()[0]


def chat_body(text: str, max_tokens: int = 16, **somnus: Any) -> dict[str, Any]:
    """A deterministic chat request; memory off unless the test turns it on."""
    opts: dict[str, Any] = {"use_memory": False, "store": False} | somnus
    return {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "somnus": opts,
    }
