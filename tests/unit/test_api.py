"""The REST API on libvirt's test driver (no QEMU): auth, VM flows, operations, errors.

The test driver runs no guest, so readiness timeouts are cut to a second and a
stand-in replaces each VM's agent where chat, memory or activation need one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api import create_app
from api.app import MAX_BODY_BYTES, PUBLIC_PATHS
from api.auth import ensure_token, rotate_token, token_path
from api.routes import ROUTERS
from core.config import Settings
from core.errors import GuestError
from guest_agent.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    Subsystem,
)
from images import builder
from images.catalog import ImageManifest
from images.recipe import Flavour
from orchestrator import errors_log
from orchestrator.host import Host
from orchestrator.locking import HomeLock
from orchestrator.models import VMRecord
from orchestrator.vms import VMService
from tests.fakes import StandInAgent, StandInAgents

# The stand-in agents (tests/fakes.py) answer for every VM: the test driver boots no guest.


# -- the app -------------------------------------------------------------------------------


@pytest.fixture
def api_app(settings: Settings, host: Host, image: ImageManifest) -> Iterator[FastAPI]:
    for stage in ("domain", "ssh", "cloud_init", "agent"):
        setattr(settings, f"timeout_{stage}_s", 1.0)  # no guest ever answers here
    app = create_app(host=host)
    yield app
    assert app.state.ctx.ops.wait_idle(30), "operations still running after the test"


@pytest.fixture
def auth(settings: Settings, api_app: FastAPI) -> dict[str, str]:
    return {"Authorization": f"Bearer {ensure_token(settings)}"}


@pytest.fixture
def api(api_app: FastAPI, auth: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(api_app, headers=auth) as client:
        yield client


def wait_op(api: TestClient, op: dict[str, Any], timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = api.get(f"/operations/{op['id']}").json()
        if view["state"] != "running":
            return view
        time.sleep(0.05)
    raise AssertionError(f"operation {op['id']} still running")


def create(api: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    response = api.post("/vms", json={"name": name, "subsystem": "chat", "memory_mib": 256,
                                      "wait": False, **extra})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/operations/{response.json()['id']}"
    return wait_op(api, response.json())


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error and body["detail"]
    return body


# -- authentication --------------------------------------------------------------------------


def _protected_requests(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app mounts but the public ones."""
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    # The mounted table is the documented one: no route escapes this test.
    assert {r.path for r in routes} == set(app.openapi()["paths"])
    fill = {"{name}": "chat", "{snapshot}": "snap", "{op_id}": "0" * 32}
    found = []
    for route in routes:
        if route.path not in PUBLIC_PATHS:
            path = route.path
            for placeholder, value in fill.items():
                path = path.replace(placeholder, value)
            found.extend((method, path) for method in sorted(route.methods))
    return found


def test_every_route_but_health_refuses_missing_or_wrong_tokens(
    api_app: FastAPI, service: VMService
) -> None:
    requests = _protected_requests(api_app)
    assert len(requests) >= 25
    client = TestClient(api_app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        for method, path in requests:
            response = client.request(method, path, headers=headers,
                                      json={"name": "chat", "subsystem": "chat"})
            assert_error(response, 401, "Unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
    assert service.store.list_vms() == []  # nothing was done
    assert client.get("/health").json()["status"] == "ok"
    # Routes the table does not know answer 401 too: nothing is revealed without the token.
    assert client.get("/no/such/route").status_code == 401


def test_token_is_private_and_rotation_locks_the_old_one_out(
    settings: Settings, api: TestClient
) -> None:
    assert token_path(settings).stat().st_mode & 0o777 == 0o600
    assert api.get("/status").status_code == 200
    old = ensure_token(settings)
    new = rotate_token(settings)
    assert new != old
    assert api.get("/status").status_code == 401  # the running app re-read the file
    assert api.get("/status", headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_openapi_and_docs_are_served(api: TestClient) -> None:
    schema = TestClient(api.app).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" not in schema["paths"]["/health"]["get"]
    assert schema["paths"]["/vms"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "swagger" in TestClient(api.app).get("/docs").text.lower()


# -- VM flows ----------------------------------------------------------------------------


def test_create_list_info_stop_delete(api: TestClient, service: VMService) -> None:
    done = create(api, "chat")
    assert done["state"] == "succeeded" and done["kind"] == "create" and done["target"] == "chat"
    assert done["result"]["name"] == "chat" and "provision" in done["result"]["timings"]
    assert any("booting" in line for line in done["progress"])

    listing = api.get("/vms").json()
    assert listing["total"] == 1 and listing["counts"]["running"] == 1
    assert listing["counts"]["stopped"] == 0
    assert listing["average_uptime_s"] is not None and listing["average_uptime_s"] >= 0
    assert listing["security"]["status"] == "ok" and listing["security"]["secrets_private"]
    vm = listing["vms"][0]
    assert (vm["name"], vm["subsystem"], vm["state"], vm["error_count"]) == (
        "chat", "chat", "running", 0)
    assert "id" not in vm and "vm_dir" not in vm

    info = api.get("/vms/chat").json()
    assert info["memory_mib"] == 256 and info["paths"]["disk"].endswith("disk.qcow2")
    assert [h["to_state"] for h in info["history"]] == ["creating", "running"]

    stopped = api.post("/vms/chat/stop", json={"force": True})
    assert stopped.status_code == 200 and stopped.json() == {"name": "chat", "clean": False}
    assert api.get("/vms/chat").json()["state"] == "stopped"
    assert api.get("/vms").json()["average_uptime_s"] is None

    started = wait_op(api, api.post("/vms/chat/start", json={"wait": False}).json())
    assert started["state"] == "succeeded"
    assert service.hv.is_running(service.domain_name("chat"))

    assert api.delete("/vms/chat").status_code == 204
    assert service.store.find_vm("chat") is None
    assert not service.hv.exists(service.domain_name("chat"))
    assert_error(api.get("/vms/chat"), 404, "NotFound")


def test_create_refuses_taken_names_and_unknown_images_at_once(api: TestClient) -> None:
    create(api, "chat")
    body = assert_error(api.post("/vms", json={"name": "chat", "subsystem": "chat"}),
                        409, "AlreadyExists")
    assert "exists already" in body["detail"]
    assert_error(api.post("/vms", json={"name": "other", "subsystem": "chat", "image": "ff"}),
                 404, "NotFound")
    assert [vm["name"] for vm in api.get("/vms").json()["vms"]] == ["chat"]


def test_snapshots_create_list_revert_delete(api: TestClient) -> None:
    create(api, "chat")
    made = api.post("/vms/chat/snapshots", json={"name": "before", "description": "clean"})
    assert made.status_code == 201 and made.json()["name"] == "before"
    assert made.json()["description"] == "clean"
    assert_error(api.post("/vms/chat/snapshots", json={"name": "before"}), 409, "AlreadyExists")
    assert [s["name"] for s in api.get("/vms/chat/snapshots").json()] == ["before"]
    reverted = api.post("/vms/chat/snapshots/before/revert")
    assert reverted.status_code == 200 and reverted.json()["snapshot"] == "before"
    assert api.delete("/vms/chat/snapshots/before").status_code == 204
    assert api.get("/vms/chat/snapshots").json() == []
    assert_error(api.delete("/vms/chat/snapshots/before"), 404, "NotFound")


def test_activate_and_status(api: TestClient, agents: StandInAgents) -> None:
    create(api, "chat")
    research = api.post("/vms", json={"name": "research", "subsystem": "research",
                                      "memory_mib": 256, "wait": False})
    wait_op(api, research.json())
    op = api.post("/vms/chat/activate")
    assert op.status_code == 202
    done = wait_op(api, op.json())
    assert done["state"] == "succeeded", done
    assert done["result"]["vm"] == "chat"
    # By subsystem, as 'somnus activate research' does.
    done = wait_op(api, api.post("/vms/research/activate").json())
    assert (done["result"]["vm"], done["result"]["previous"]) == ("research", "chat")
    status = api.get("/status").json()
    assert status["foreground"] == "research" and status["policy"] == "single-active"
    tiers = {vm["name"]: vm["tier"] for vm in status["vms"]}
    assert tiers["research"] == "foreground"
    assert api.get("/vms").json()["foreground"] == "research"
    assert_error(api.post("/vms/project/activate"), 404, "NotFound")


def test_operation_events_stream_progress_then_the_end(api: TestClient) -> None:
    response = api.post("/vms", json={"name": "chat", "subsystem": "chat", "memory_mib": 256,
                                      "wait": False})
    op_id = response.json()["id"]
    with api.stream("GET", f"/operations/{op_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = [block for block in text.split("\n\n") if block and not block.startswith(":")]
    assert events[0].startswith("event: progress\nid: 0\n")
    last = events[-1].split("\n")
    assert last[0] == "event: succeeded"
    assert json.loads(last[1].removeprefix("data: "))["result"]["name"] == "chat"
    # Resuming after the last line seen gives only the final event.
    seen = sum(1 for e in events if e.startswith("event: progress"))
    with api.stream("GET", f"/operations/{op_id}/events",
                    headers={"Last-Event-ID": str(seen - 1)}) as stream:
        again = "".join(stream.iter_text())
    assert "event: progress" not in again and "event: succeeded" in again
    assert api.get("/operations").json()[0]["id"] == op_id


# -- conflicts, bad input, errors --------------------------------------------------------


def test_a_second_operation_on_a_busy_vm_is_refused(
    api: TestClient, service: VMService, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(api, "chat")
    api.post("/vms/chat/stop", json={"force": True})
    release = []

    def slow_wait_ready(self: VMService, record: VMRecord,
                        progress: Any = None) -> dict[str, float]:
        while not release:
            time.sleep(0.01)
        return {}

    monkeypatch.setattr(VMService, "wait_ready", slow_wait_ready)
    first = api.post("/vms/chat/start", json={"wait": True})
    assert first.status_code == 202
    try:
        for method, path in (("POST", "/vms/chat/start"), ("POST", "/vms/chat/stop"),
                             ("DELETE", "/vms/chat"), ("POST", "/vms/chat/activate"),
                             ("POST", "/vms/chat/snapshots")):
            body = {"name": "snap"} if path.endswith("snapshots") else None
            refused = assert_error(api.request(method, path, json=body), 409, "Conflict")
            assert first.json()["id"] in refused["detail"]
    finally:
        release.append(True)
    assert wait_op(api, first.json())["state"] == "succeeded"
    assert service.store.find_vm("chat") is not None  # the delete was not done
    assert api.delete("/vms/chat").status_code == 204  # free again


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("GET", "/vms/nope", None, 404, "NotFound"),
    ("POST", "/vms/nope/start", None, 404, "NotFound"),
    ("POST", "/vms/nope/stop", None, 404, "NotFound"),
    ("DELETE", "/vms/nope", None, 404, "NotFound"),
    ("GET", "/vms/nope/errors", None, 404, "NotFound"),
    ("GET", "/operations/" + "0" * 32, None, 404, "NotFound"),
    ("GET", "/vms/Bad_Name", None, 422, "InvalidInput"),
    ("GET", "/vms/ch--at", None, 422, "InvalidInput"),
    ("GET", "/operations/xyz", None, 422, "InvalidInput"),
    ("POST", "/vms", {"name": "chat"}, 422, "InvalidInput"),
    ("POST", "/vms", {"name": "chat", "subsystem": "chat", "colour": "teal"}, 422,
     "InvalidInput"),
    ("POST", "/vms", {"name": "chat", "subsystem": "mainframe"}, 422, "InvalidInput"),
    ("POST", "/vms", {"name": "chat", "subsystem": "chat", "memory_mib": "lots"}, 422,
     "InvalidInput"),
    ("POST", "/vms", {"name": "chat", "subsystem": "chat", "memory_mib": 64}, 422,
     "InvalidInput"),
    ("POST", "/vms", {"name": "1chat", "subsystem": "chat"}, 422, "InvalidInput"),
    ("POST", "/vms", [1, 2], 422, "InvalidInput"),
    ("POST", "/vms/nope/stop", {"force": True, "now": True}, 422, "InvalidInput"),
    ("POST", "/chat", {"message": ""}, 422, "InvalidInput"),
    ("POST", "/chat", {"message": "hi", "temperature": 9}, 422, "InvalidInput"),
    ("POST", "/vms/nope/memory", {"content": "x", "secret": 1}, 422, "InvalidInput"),
    ("DELETE", "/status", None, 405, "MethodNotAllowed"),
])
def test_bad_requests_get_clear_4xx_bodies(api: TestClient, service: VMService, method: str,
                                           path: str, body: Any, status: int,
                                           error: str) -> None:
    assert_error(api.request(method, path, json=body), status, error)
    assert service.store.list_vms() == []  # nothing half-done


def test_an_invalid_name_says_why(api: TestClient) -> None:
    detail = assert_error(api.post("/vms", json={"name": "Chat", "subsystem": "chat"}),
                          422, "InvalidInput")["detail"]
    assert detail.startswith("body.name:") and "lowercase" in detail


def test_oversized_bodies_are_refused_with_413(api: TestClient, service: VMService) -> None:
    big = {"name": "chat", "subsystem": "chat", "pad": "x" * MAX_BODY_BYTES}
    assert_error(api.post("/vms", json=big), 413, "PayloadTooLarge")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"message": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    assert_error(api.post("/chat", content=chunks(), headers={"content-type": "application/json"}),
                 413, "PayloadTooLarge")
    assert service.store.list_vms() == []


def test_failed_operations_are_recorded_newest_first(api: TestClient) -> None:
    create(api, "chat")
    api.post("/vms/chat/stop", json={"force": True})
    # The test driver boots no guest: waiting for readiness times out (1 s here).
    failed = wait_op(api, api.post("/vms/chat/start", json={"wait": True}).json())
    assert failed["state"] == "failed" and failed["error"]["error"] == "ReadinessTimeout"
    assert failed["result"] is None
    api.post("/vms/chat/stop", json={"force": True})
    wait_op(api, api.post("/vms/chat/start", json={"wait": True}).json())
    errors = api.get("/vms/chat/errors").json()
    assert len(errors) == 2 and all(e["source"] == "start" for e in errors)
    assert errors[0]["at"] >= errors[1]["at"]
    assert "not ready" in errors[0]["message"]
    assert api.get("/vms").json()["vms"][0]["error_count"] == 2
    assert len(api.get("/vms/chat").json()["recent_errors"]) == 2
    # Refusals of the request itself are not the VM's errors.
    api.post("/vms/chat/snapshots", json={"name": "x"})
    api.post("/vms/chat/snapshots", json={"name": "x"})
    assert len(api.get("/vms/chat/errors").json()) == 2


def test_error_records_newest_first_and_scoped_to_the_vm(
    api: TestClient, service: VMService
) -> None:
    create(api, "chat")
    for n in range(3):
        errors_log.add_error(service.store, "chat", f"s{n}", f"m{n}")
    errors_log.add_error(service.store, "other", "s", "not chat's")
    assert [e["message"] for e in api.get("/vms/chat/errors").json()] == ["m2", "m1", "m0"]
    # A VM made again under the same name starts without its predecessor's errors.
    assert api.delete("/vms/chat").status_code == 204
    create(api, "chat")
    assert api.get("/vms/chat/errors").json() == []


# -- chat and memory ---------------------------------------------------------------------


def test_chat_whole_and_streamed(api: TestClient, agents: StandInAgents) -> None:
    assert_error(api.post("/chat", json={"message": "hi"}), 409, "Conflict")  # no foreground
    create(api, "chat")  # a new VM is the foreground
    assert api.post("/chat", json={"message": "hi"}).json()["vm"] == "chat"
    reply = api.post("/vms/chat/chat", json={"message": "hello there", "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    assert reply.json()["vm"] == "chat"
    assert reply.json()["choices"][0]["message"]["content"] == "chat heard: hello there"

    wait_op(api, api.post("/vms/chat/activate").json())
    with api.stream("POST", "/chat", json={"message": "hello there", "stream": True}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in stream.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(x[6:]) for x in lines[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == "chat heard: hello there"
    assert chunks[-1].somnus is not None and chunks[-1].usage is not None


def test_chat_failures_before_and_during_the_stream(
    api: TestClient, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_error(api.post("/vms/nope/chat", json={"message": "hi", "stream": True}),
                 404, "NotFound")
    create(api, "chat")
    agents.break_all()
    assert_error(api.post("/vms/chat/chat", json={"message": "hi", "stream": True}),
                 502, "GuestError")  # failed before the first event: a plain error

    def breaks_midway(self: StandInAgent, request: ChatCompletionRequest
                      ) -> Iterator[ChatCompletionChunk]:
        yield ChatCompletionChunk.model_validate(
            {"id": "c", "created": 1, "model": "m", "choices": [{"delta": {"role": "assistant"}}]})
        raise GuestError("agent chat stream broke: connection reset")

    agents.break_all(False)
    monkeypatch.setattr(StandInAgent, "chat_stream", breaks_midway)
    with api.stream("POST", "/vms/chat/chat", json={"message": "hi", "stream": True}) as stream:
        text = "".join(stream.iter_text())
    assert "event: error" in text and "GuestError" in text and "[DONE]" not in text
    sources = [e["source"] for e in api.get("/vms/chat/errors").json()]
    assert sources == ["chat stream", "POST /vms/{name}/chat"]


def test_memory_add_search_list_export_import(
    api: TestClient, agents: StandInAgents
) -> None:
    create(api, "chat")
    added = api.post("/vms/chat/memory", json={"content": "my favourite colour is teal",
                                               "importance": "high"})
    assert added.status_code == 200 and added.json()["memory"]["importance"] == "high"
    hits = api.post("/vms/chat/memory/search", json={"query": "teal", "top_k": 3}).json()
    assert [h["memory"]["content"] for h in hits["hits"]] == ["my favourite colour is teal"]
    assert api.get("/vms/chat/memory", params={"limit": 10}).json()["total"] == 1
    exported = api.get("/vms/chat/memory/export")
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    assert json.loads(exported.text.splitlines()[0])["content"] == "my favourite colour is teal"
    imported = api.post("/vms/chat/memory/import", content=exported.text,
                        headers={"content-type": "application/x-ndjson"})
    assert imported.json() == {"imported": 1, "deduplicated": 0}


# -- images ----------------------------------------------------------------------------


def test_images_list_and_build_operation(
    api: TestClient, image: ImageManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = api.get("/images").json()
    assert [i["recipe_hash"] for i in listed if i["flavour"] == "base"] == [image.recipe_hash]

    def fake_build(settings: Settings, progress: Any = None, force: bool = False,
                   flavour: Flavour = Flavour.BASE) -> ImageManifest:
        progress(f"building {flavour} (force={force})")
        return image

    monkeypatch.setattr(builder, "build_image", fake_build)
    op = api.post("/images/build", json={"force": True, "flavour": "artifacts"})
    assert op.status_code == 202
    done = wait_op(api, op.json())
    assert done["state"] == "succeeded"
    assert done["progress"] == ["building artifacts (force=True)"]
    assert done["result"]["recipe_hash"] == image.recipe_hash


# -- reads never wait for a long operation; the CLI side ------------------------------------


def test_listing_and_status_answer_while_an_operation_holds_the_lock(
    api: TestClient, settings: Settings
) -> None:
    create(api, "chat")
    other = HomeLock(settings.home / ".lock")  # as another process mid-swap would hold it
    with other():
        started = time.monotonic()
        assert api.get("/vms").json()["total"] == 1
        assert api.get("/status").json()["vms"][0]["name"] == "chat"
        assert api.get("/vms/chat").status_code == 200
        assert time.monotonic() - started < 5


def test_cli_prints_and_rotates_the_token(settings: Settings,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setenv("SOMNUS_HOME", str(settings.home))
    runner = CliRunner()
    first = runner.invoke(app, ["api", "token"])
    assert first.exit_code == 0 and first.stdout.strip() == ensure_token(settings)
    assert runner.invoke(app, ["api", "token"]).stdout == first.stdout  # stable
    rotated = runner.invoke(app, ["api", "token", "--rotate"])
    assert rotated.stdout.strip() == ensure_token(settings) != first.stdout.strip()
    assert "--port" in runner.invoke(app, ["serve", "--help"]).stdout


def test_the_cli_json_and_the_http_answer_are_one_document(
    api: TestClient, settings: Settings, agents: StandInAgents,
    monkeypatch: pytest.MonkeyPatch, fresh_cli_host: None,
) -> None:
    from typer.testing import CliRunner

    from cli import app

    create(api, "chat")
    api.post("/vms/chat/snapshots", json={"name": "before"})
    agents.break_all()  # the CLI's own host has no stand-ins: both see no agent report
    for key, value in {"HOME": settings.home, "CACHE": settings.cache,
                       "LIBVIRT_URI": settings.libvirt_uri, "ACCEL": "tcg",
                       "DOMAIN_PREFIX": settings.domain_prefix}.items():
        monkeypatch.setenv(f"SOMNUS_{key}", str(value))

    def cli_json(*args: str) -> Any:
        result = CliRunner().invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    # Uptimes (and their average) move between the two reads; resident memory is the
    # meter's, a seam the API's fake host fills with its scripted figures.
    moving = {"uptime_s", "average_uptime_s", "resident_mib", "budget_used_mib"}

    def steady(doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k: steady(v) for k, v in doc.items() if k not in moving}
        return [steady(v) for v in doc] if isinstance(doc, list) else doc

    assert steady(cli_json("vm", "info", "chat")) == steady(api.get("/vms/chat").json())
    assert steady(cli_json("vm", "list")) == steady(api.get("/vms").json())
    assert steady(cli_json("status")) == steady(api.get("/status").json())
    assert cli_json("vm", "snapshot", "list", "chat") == api.get("/vms/chat/snapshots").json()


# -- security ---------------------------------------------------------------------------------


def test_security_status_policy_events_and_release(api: TestClient, host: Host,
                                                   agents: StandInAgents) -> None:
    create(api, "chat")
    host.vms.lifecycle.mark_ready(host.store.get_vm("chat"))
    (status,) = api.get("/security").json()
    assert (status["name"], status["status"], status["hold"]) == ("chat", "ok", None)
    policy = api.get("/security/policy").json()
    assert {r["name"] for r in policy["rules"]} >= {"cpu-hog", "auth-flood"}
    policy["rules"] = [{"name": "any-cpu", "metric": "cpu_percent", "above": -1,
                        "action": "suspend"}]
    assert api.put("/security/policy", json=policy).json()["rules"][0]["name"] == "any-cpu"
    bad = {**policy, "rules": [{"name": "x", "metric": "nope", "above": 1, "action": "warn"}]}
    assert_error(api.put("/security/policy", json=bad), 422, "InvalidInput")
    monitor = host.security.monitor()  # reads the policy the API saved
    monitor.sample()
    time.sleep(0.01)
    (event,) = monitor.sample().events  # the second reading gives a CPU rate: it fires
    assert event.action == "suspend"
    assert api.get("/vms").json()["vms"][0]["security"] == "held"
    (logged,) = api.get("/security/events", params={"vm": "chat"}).json()
    assert logged["rule"] == "any-cpu" and logged["evidence"]
    released = api.post("/security/vms/chat/release").json()
    assert released["hold"] is None and released["state"] == "running"
    assert_error(api.get("/security/events", params={"vm": "nope"}), 404, "NotFound")


def test_serve_refuses_plain_http_beyond_loopback(tmp_path: Any) -> None:
    from api.server import check_exposure
    from core.errors import InvalidInput

    check_exposure("127.0.0.1", None, insecure=False)
    check_exposure("0.0.0.0", (tmp_path / "c", tmp_path / "k"), insecure=False)
    check_exposure("0.0.0.0", None, insecure=True)
    with pytest.raises(InvalidInput, match="--tls-cert and --tls-key, or --insecure-http"):
        check_exposure("0.0.0.0", None, insecure=False)


def test_the_served_app_runs_the_monitor_while_it_lives(host: Host, settings: Settings) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=256, wait=False)
    app = create_app(host=host, monitor=True)
    headers = {"Authorization": f"Bearer {ensure_token(settings)}"}
    with TestClient(app, headers=headers) as client:
        deadline = time.monotonic() + 10
        while client.get("/security").json()[0]["sampled_at"] is None:
            assert time.monotonic() < deadline, "the monitor never sampled"
            time.sleep(0.1)
    assert not any(t.name == "security-monitor" for t in threading.enumerate())
