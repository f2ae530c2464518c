"""The REST API end to end on real VMs: create → activate → chat (streamed) → stop → delete,
over real HTTP (uvicorn on loopback), following the create operation by SSE."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from api import create_app
from api.auth import ensure_token
from core.config import Settings
from images.catalog import ImageManifest
from orchestrator.vms import VMService
from tests.vm.test_chat import wait_model_ready

pytestmark = pytest.mark.vm

NAME = "apitest"


@pytest.fixture
def api(settings: Settings, image: ImageManifest) -> Iterator[httpx.Client]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, api_host="127.0.0.1"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    headers = {"Authorization": f"Bearer {ensure_token(settings)}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                      timeout=600) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=60)


def follow(api: httpx.Client, op: dict[str, Any]) -> dict[str, Any]:
    """Read an operation's events to the end; return the final operation."""
    with api.stream("GET", f"/operations/{op['id']}/events") as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "progress":
                print(json.loads(line[6:])["line"])
            elif line.startswith("data: "):
                final: dict[str, Any] = json.loads(line[6:])
                return final
    raise AssertionError("the event stream ended without the operation's end")


@pytest.mark.timeout(1500)
def test_create_activate_chat_stop_through_the_api(api: httpx.Client,
                                                   service: VMService) -> None:
    try:
        started = time.monotonic()
        response = api.post("/vms", json={"name": NAME, "subsystem": "chat",
                                          "memory_mib": 1024})
        assert response.status_code == 202, response.text
        assert time.monotonic() - started < 10  # the boot happens in the operation
        created = follow(api, response.json())
        assert created["state"] == "succeeded", created["error"]
        assert api.get(f"/vms/{NAME}").json()["agent"]["vm_name"] == NAME

        activated = follow(api, api.post(f"/vms/{NAME}/activate").json())
        assert activated["state"] == "succeeded", activated["error"]
        assert api.get("/status").json()["foreground"] == NAME

        wait_model_ready(service, NAME)
        body = {"message": "Say hello.", "stream": True, "max_tokens": 4, "temperature": 0}
        with api.stream("POST", "/chat", json=body) as stream:
            assert stream.status_code == 200, stream.read().decode()
            data = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]", data[-3:]
        chunks = [json.loads(x) for x in data[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text.strip()
        assert chunks[-1]["somnus"]["conversation_id"]

        stopped = api.post(f"/vms/{NAME}/stop")
        assert stopped.status_code == 200, stopped.text
        assert api.get(f"/vms/{NAME}").json()["state"] == "stopped"
        assert api.get(f"/vms/{NAME}/errors").json() == []
    finally:
        if service.store.find_vm(NAME) is not None:
            assert api.delete(f"/vms/{NAME}").status_code == 204
