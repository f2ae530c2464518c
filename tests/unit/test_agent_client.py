"""The host's AgentClient against the real agent app over real loopback HTTP.

This is the wire between orchestrator and guest without the VM in between: the
same uvicorn server the guest runs, the real SmolLM2 runtime, real sockets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from core.errors import Busy, GuestError, InvalidInput, NotFound
from guest_agent.app import RETRY_AFTER_S, create_app
from guest_agent.protocol import (
    AgentStatus,
    ChatCompletionRequest,
    ChatMessage,
    ChatRole,
    MemoryCreate,
    MemoryImportance,
    MemoryListResponse,
    MemorySearchRequest,
    MemoryType,
    SomnusChatOptions,
)
from guest_agent.runtime import ModelRuntime
from orchestrator.agent_client import AgentClient
from tests.unit.conftest import TOKEN, agent_config

VM = "test-vm"  # agent_config's vm_name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Served = Callable[..., tuple[AgentClient, FastAPI]]


@pytest.fixture
def serve(tmp_path: Path, agent_runtime: ModelRuntime) -> Iterator[Served]:
    """Start agent apps (config overrides as keywords) on uvicorn; stop them at the end."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**config: Any) -> tuple[AgentClient, FastAPI]:
        port = free_port()
        app = create_app(agent_config(tmp_path / f"agent{len(servers)}", **config), agent_runtime)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        agent = AgentClient(port, TOKEN, vm_name=VM)
        agent.wait_model(timeout_s=60, poll_s=0.1)
        return agent, app

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def client(serve: Served) -> AgentClient:
    return serve()[0]


def request(text: str, **somnus: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        messages=[ChatMessage(role=ChatRole.USER, content=text)],
        temperature=0.0, max_tokens=12, seed=1,
        somnus=SomnusChatOptions.model_validate({"use_memory": False, "store": False, **somnus}),
    )


# -- the guest's errors keep their meaning on the host ----------------------------------------


def test_a_full_queue_is_busy_with_the_guests_wait(serve: Served) -> None:
    agent, app = serve(max_queue=0)
    gate = app.state.agent.gate
    gate.enter()  # a request holds the model and the queue holds none: the agent is full
    try:
        for call in (agent.chat, lambda r: list(agent.chat_stream(r))):
            with pytest.raises(Busy) as caught:
                call(request("Hi"))
            busy = caught.value
            assert busy.retry_after_s == int(RETRY_AFTER_S)
            assert busy.exit_code == 11 and busy.http_status == 503
            assert busy.message.startswith(f"VM '{VM}': the VM's agent is busy; retry in 2 s: ")
            assert "agent busy: 1 request(s) running or queued" in busy.message  # the guest's
            assert isinstance(busy, GuestError)  # "not now" for best-effort callers as before
    finally:
        gate.leave()
    assert agent.chat(request("Hi")).choices  # free again


def test_an_unknown_role_is_not_found(client: AgentClient) -> None:
    bad = request("Hi", role="Pirate")
    for call in (client.chat, lambda r: list(client.chat_stream(r))):
        with pytest.raises(NotFound, match=rf"^VM '{VM}': unknown role 'Pirate'; known roles: ") \
                as caught:
            call(bad)
        assert caught.value.exit_code == 3 and caught.value.http_status == 404


def test_bad_requests_are_invalid_input(client: AgentClient) -> None:
    overflow = request("word " * 1500)  # far beyond the test's 512-token window
    for call in (client.chat, lambda r: list(client.chat_stream(r))):
        with pytest.raises(InvalidInput, match=f"^VM '{VM}': .*never cut") as caught:
            call(overflow)
        assert caught.value.exit_code == 2 and caught.value.http_status == 422
    with pytest.raises(InvalidInput, match=r"^VM 'test-vm': "):
        client.memory_import("not json\n")
    # FastAPI's own 422 (a query parameter of the wrong type) reads as one line too.
    with pytest.raises(InvalidInput, match=r"^VM 'test-vm': query\.limit: Input should be"):
        client._call("GET", "/memory", MemoryListResponse, 10, params={"limit": "many"})


def test_a_wrong_token_is_a_guest_error_naming_the_token(client: AgentClient) -> None:
    port = int(client.base_url.rsplit(":", 1)[1])
    with pytest.raises(GuestError) as caught:
        AgentClient(port, "x" * 40, vm_name=VM).health()
    assert type(caught.value) is GuestError and caught.value.exit_code == 10
    assert caught.value.message == f"VM '{VM}': the agent refused the VM's token (401: wrong token)"


def test_an_agent_that_does_not_listen(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there any more
    agent = AgentClient(port, TOKEN, vm_name="ghost")
    for call in (agent.health, lambda: list(agent.chat_stream(request("Hi")))):
        with pytest.raises(GuestError) as caught:
            call()
        message = caught.value.message
        assert message.startswith(f"VM 'ghost': its agent at http://127.0.0.1:{port} does not "
                                  "answer (")
        assert message.endswith("; check the VM: 'somnus vm info ghost'") and "\n" not in message
    anonymous = AgentClient(port, TOKEN)
    with pytest.raises(GuestError, match="somnus vm info NAME"):
        anonymous.info()


def test_an_agent_that_accepts_but_never_answers() -> None:
    with socket.socket() as listener:  # the kernel accepts; nobody reads or writes
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        agent = AgentClient(listener.getsockname()[1], TOKEN, vm_name="stuck")
        started = time.monotonic()
        with pytest.raises(GuestError, match=r"does not answer \(timed out\); check the VM: "
                                             r"'somnus vm info stuck'$"):
            agent.health(timeout_s=0.3)
        assert time.monotonic() - started < 5


def test_a_failure_reported_mid_stream_is_a_guest_error(client: AgentClient) -> None:
    # Past the 200 the agent can only report in-band (guest_agent.app._chunks).
    with pytest.raises(GuestError, match=r"^VM 'test-vm': agent chat failed mid-stream: "
                                         r"RuntimeError: boom$"):
        client._chunk('{"error": "RuntimeError: boom"}')
    with pytest.raises(GuestError, match="unexpected chunk"):
        client._chunk('{"neither": 1}')


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
