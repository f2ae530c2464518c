"""The host's AgentClient against the real agent app over real loopback HTTP.

This is the wire between orchestrator and guest without the VM in between: the
same uvicorn server the guest runs, the real SmolLM2 runtime, real sockets.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from guest_agent.app import create_app
from guest_agent.protocol import (
    AgentStatus,
    ChatCompletionRequest,
    ChatMessage,
    ChatRole,
    MemoryCreate,
    MemoryImportance,
    MemorySearchRequest,
    MemoryType,
    SomnusChatOptions,
)
from guest_agent.runtime import ModelRuntime
from orchestrator.agent_client import AgentClient
from orchestrator.errors import GuestError
from tests.unit.conftest import TOKEN, agent_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def client(tmp_path: Path, agent_runtime: ModelRuntime) -> Iterator[AgentClient]:
    port = free_port()
    app = create_app(agent_config(tmp_path / "agent"), agent_runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    agent = AgentClient(port, TOKEN)
    agent.wait_model(timeout_s=60, poll_s=0.1)
    yield agent
    server.should_exit = True
    thread.join(10)


def request(text: str, **somnus: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        messages=[ChatMessage(role=ChatRole.USER, content=text)],
        temperature=0.0, max_tokens=12, seed=1,
        somnus=SomnusChatOptions.model_validate({"use_memory": False, "store": False, **somnus}),
    )


def test_wrong_token_is_a_guest_error(client: AgentClient) -> None:
    with pytest.raises(GuestError, match="403"):
        AgentClient(int(client.base_url.rsplit(":", 1)[1]), "x" * 40).health()


def test_health_info_clock(client: AgentClient) -> None:
    assert client.health().vm_name == "test-vm"
    assert any(m.name.endswith(".gguf") for m in client.info().models)
    clock = client.sync_clock()
    assert abs(clock.skew_s) < 5 and clock.set is False  # host and "guest" share a clock


def test_streamed_chat_matches_the_whole_answer(client: AgentClient) -> None:
    whole = client.chat(request("Name a colour.")).choices[0].message.content
    chunks = list(client.chat_stream(request("Name a colour.")))
    streamed = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert whole and streamed == whole
    assert chunks[-1].somnus is not None and chunks[-1].usage is not None
    assert client.last_prompt().layers


def test_memory_round_trip(client: AgentClient) -> None:
    added = client.memory_add(MemoryCreate(content="The orchard has seven apple trees.",
                                           importance=MemoryImportance.HIGH))
    assert not added.deduplicated
    again = client.memory_add(MemoryCreate(content="The orchard has seven apple trees."))
    assert again.deduplicated and again.memory.memory_id == added.memory.memory_id
    hits = client.memory_search(MemorySearchRequest(query="How many apple trees?")).hits
    assert hits[0].memory.memory_id == added.memory.memory_id
    listed = client.memory_list(memory_type=MemoryType.CORE_FACT)
    assert listed.total == 1
    exported = client.memory_export()
    assert exported.count("\n") == 1 and "orchard" in exported
    assert client.memory_import(exported).deduplicated == 1
    assert client.flush().memories == 1


def test_wait_model_names_the_model_it_waits_for(client: AgentClient) -> None:
    assert client.wait_model(timeout_s=5).status is AgentStatus.OK
    with pytest.raises(GuestError, match="not ready after"):
        client.wait_model(timeout_s=0.3, model_id="another-model", poll_s=0.1)
