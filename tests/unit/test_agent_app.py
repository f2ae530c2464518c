"""Agent HTTP surface: auth on every route, health while loading, the bounded queue."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Route

from guest_agent import identity
from guest_agent.app import create_app, wait_for_config
from guest_agent.protocol import ChatCompletionRequest, Subsystem
from guest_agent.runtime import ModelRuntime
from guest_agent.security import FailureThrottle
from tests.unit.conftest import (
    AUTH,
    TEST_CTX,
    ClientFactory,
    agent_config,
    chat_body,
    model_config,
)

EXPECTED_PATHS = {
    "/health", "/info", "/model", "/v1/models", "/v1/chat/completions", "/v1/embeddings",
    "/memory", "/memory/search", "/memory/export", "/memory/import", "/memory/flush",
    "/memory/x", "/prompt/last", "/prompt/profile", "/prompt/roles", "/openapi.json",
    "/identity", "/runs", "/runs/x/files/x", "/web", "/security",
}  # fmt: skip


def test_every_route_requires_the_token(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    # Every failure counted, none slowed down: the throttle has its own test.
    app = create_app(agent_config(tmp_path), agent_runtime,
                     failures=FailureThrottle(allowed=1000))
    agent_client = TestClient(app)
    # Generated from the app itself, so a route added later is covered too.
    routes = [
        (method, re.sub(r"\{[^}]+\}", "x", route.path))
        for route in app.routes
        if isinstance(route, Route)  # APIRoute and any plain Starlette route
        for method in sorted(route.methods or ())
    ]
    assert {path for _, path in routes} >= EXPECTED_PATHS
    for method, path in routes:
        missing = agent_client.request(method, path)
        assert missing.status_code == 401, (method, path)
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = agent_client.request(method, path, headers={"Authorization": "Bearer " + "w" * 40})
        # 401 for a wrong key too, as OpenAI clients expect.
        assert wrong.status_code == 401, (method, path)
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert wrong.json()["error"] == "wrong token"
    # No framework page is left open either.
    for path in ("/docs", "/redoc"):
        assert agent_client.get(path).status_code in (401, 404), path
    assert agent_client.get("/openapi.json", headers=AUTH).json()["info"]["title"]
    # Every refusal was counted, and the guest's report says so.
    report = agent_client.get("/security", headers=AUTH).json()
    assert report["failed_agent_auths"] == 2 * len(routes)  # /docs, /redoc: no such routes
    assert {e["kind"] for e in report["events"]} == {"auth_failure"}


def test_a_vm_from_a_template_takes_its_own_name_and_token(
        tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    config = agent_config(tmp_path)
    path = tmp_path / "agent.json"
    path.write_text(config.model_dump_json() + "\n" + " " * 200)  # longer than the new one
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    agent_client = TestClient(create_app(config, agent_runtime, config_path=path,
                                         identity_dir=runtime_dir))
    new_token = "n" * 64
    seen: list[str] = []
    root_unit = threading.Thread(target=stand_in_root_unit, args=(runtime_dir, seen))
    root_unit.start()
    key = {"seed": "ab" * 32, "host_public": "ssh-ed25519 AAAAC3 host-clone",
           "host_private": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"}
    short = agent_client.post("/identity", headers=AUTH,
                              json={"vm_name": "clone", "token": "short", **key})
    assert short.status_code == 422  # a token too short to be one the host made
    not_a_hostname = agent_client.post("/identity", headers=AUTH,
                                       json={"vm_name": "a;reboot", "token": new_token, **key})
    assert not_a_hostname.status_code == 422
    answer = agent_client.post("/identity", headers=AUTH,
                               json={"vm_name": "clone", "token": new_token, **key})
    root_unit.join(5)
    assert answer.json() == {"vm_name": "clone", "applied": True, "saved": True}
    assert seen[0].splitlines()[:3] == ["clone", "ab" * 32, "ssh-ed25519 AAAAC3 host-clone"]
    assert agent_client.get("/health", headers=AUTH).status_code == 401  # the old one is gone
    new_auth = {"Authorization": f"Bearer {new_token}"}
    assert agent_client.get("/health", headers=new_auth).json()["vm_name"] == "clone"
    saved = wait_for_config(path)  # what a cold boot reads
    assert (saved.vm_name, saved.token, saved.data_dir) == ("clone", new_token, str(tmp_path))


def stand_in_root_unit(folder: Path, seen: list[str]) -> None:
    """What somnus-identity.path and its script do (the VM test runs the real ones)."""
    request = folder / identity.REQUEST
    deadline = time.monotonic() + 5
    while not request.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.append(request.read_text())
    (folder / identity.ANSWER).write_text(seen[0].splitlines()[0] + "\n")
    request.unlink()


def test_identity_is_not_applied_when_the_root_unit_fails(tmp_path: Path) -> None:
    def failing_unit() -> None:
        while not (tmp_path / identity.REQUEST).exists():
            time.sleep(0.01)
        (tmp_path / identity.REQUEST).unlink()  # the script's trap, no answer

    unit = threading.Thread(target=failing_unit)
    unit.start()
    assert not identity.hand_over(tmp_path, "clone\n", "clone", timeout_s=5)
    unit.join(5)
    assert not identity.hand_over(tmp_path, "clone\n", "clone", timeout_s=0.2)  # no unit
    assert not (tmp_path / identity.REQUEST).exists()  # withdrawn after the timeout


def test_health_says_loading_until_ready(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    app = create_app(agent_config(tmp_path), agent_runtime)
    agent_client = TestClient(app)  # not entered: startup (model + memory boot) has not run
    assert agent_client.get("/health", headers=AUTH).json()["status"] == "loading"
    refused = agent_client.post("/v1/chat/completions", json=chat_body("Hi"), headers=AUTH)
    assert refused.status_code == 503 and "loading" in refused.json()["error"]
    assert refused.headers["retry-after"]
    with agent_client:
        assert app.state.agent.wait_ready(60)
        health = agent_client.get("/health", headers=AUTH).json()
        assert health["status"] == "ok" and health["model"] == agent_runtime.model_id


def test_own_runtime_loads_in_background(tmp_path: Path) -> None:
    app = create_app(agent_config(tmp_path))
    with TestClient(app) as agent_client:
        assert app.state.agent.wait_ready(60)
        assert agent_client.get("/health", headers=AUTH).json()["status"] == "ok"
        status = agent_client.get("/model", headers=AUTH).json()
        assert status["state"] == "ready" and status["n_ctx"] == TEST_CTX
        assert status["n_ctx_train"] == 8192 and status["load_seconds"] > 0


def test_load_failure_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"onnx")
    config = agent_config(tmp_path).model_copy(update={"model": model_config(model_path=str(bad))})
    app = create_app(config)
    with TestClient(app) as agent_client:
        app.state.agent.wait_ready(60)
        health = agent_client.get("/health", headers=AUTH).json()
        assert health["status"] == "error" and "not supported" in health["error"]
        refused = agent_client.post("/v1/chat/completions", json=chat_body("Hi"), headers=AUTH)
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]


def test_full_queue_answers_503_without_waiting(make_agent_client: ClientFactory) -> None:
    agent_client, app = make_agent_client(max_queue=1)
    gate = app.state.agent.gate
    gate.enter()  # a request is running on the model
    queued: list[int] = []
    waiter = threading.Thread(
        target=lambda: queued.append(
            agent_client.post(
                "/v1/chat/completions", json=chat_body("Hi", 4), headers=AUTH
            ).status_code
        )
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while gate.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.in_flight == 2  # one running, one waiting: the queue is full
    started = time.monotonic()
    for path, body in (
        ("/v1/chat/completions", chat_body("Hi", 4)),
        ("/v1/embeddings", {"input": "hello"}),
        ("/memory/search", {"query": "hello"}),
    ):
        full = agent_client.post(path, json=body, headers=AUTH)
        assert full.status_code == 503, path
        assert "busy" in full.json()["error"] and full.headers["retry-after"]
    assert time.monotonic() - started < 2  # refused at once, not after a wait
    gate.leave()
    waiter.join(60)
    assert queued == [200]  # the queued request ran once the slot was free
    assert gate.in_flight == 0


def test_streaming_releases_the_slot(make_agent_client: ClientFactory) -> None:
    agent_client, app = make_agent_client(max_queue=0)
    for _ in range(2):  # a leaked slot would turn the second into a 503
        r = agent_client.post(
            "/v1/chat/completions", json=chat_body("Hi", 4) | {"stream": True}, headers=AUTH
        )
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert app.state.agent.gate.in_flight == 0


def test_embeddings_endpoint(agent_client: TestClient, agent_runtime: ModelRuntime) -> None:
    r = agent_client.post("/v1/embeddings", json={"input": ["a dog", "a cat"]}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["model"] == agent_runtime.embedding_model_id == "all-MiniLM-L6-v2.f32"
    assert len(body["data"][0]["embedding"]) == agent_runtime.embedding_dim
    assert body["usage"]["prompt_tokens"] > 0
    too_long = agent_client.post("/v1/embeddings", json={"input": "word " * 3000}, headers=AUTH)
    assert too_long.status_code == 400 and "embedding context" in too_long.json()["error"]


def test_models_and_info(agent_client: TestClient, agent_runtime: ModelRuntime) -> None:
    assert (
        agent_client.get("/v1/models", headers=AUTH).json()["data"][0]["id"]
        == agent_runtime.model_id
    )
    info = agent_client.get("/info", headers=AUTH).json()
    assert info["packages"]["llama_cpp_python"] != "missing"
    assert info["llama_build"] == "portable"  # no choice was made in this process: the wheel's


@pytest.mark.parametrize("subsystem", list(Subsystem))
def test_prompt_strategy_per_subsystem(
    make_agent_client: ClientFactory, subsystem: Subsystem
) -> None:
    _, app = make_agent_client(subsystem)
    turn = app.state.agent.engine.prepare(ChatCompletionRequest.model_validate(chat_body("Hello")))
    report = turn.report()
    research = subsystem is Subsystem.RESEARCH
    assert report.strategy == ("prompt_manager" if research else "modifying_prompts")
    assert report.role == ("Researcher" if research else None)


def test_the_agent_waits_for_cloud_init_to_finish_writing_its_config(tmp_path: Path) -> None:
    """Missing, empty, then half-written: the agent starts before the seed's write_files."""
    path = tmp_path / "agent.json"
    full = agent_config(tmp_path).model_dump_json()
    steps = iter([lambda: path.write_text(""), lambda: path.write_text(full[: len(full) // 2]),
                  lambda: path.write_text(full)])
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        next(steps)()

    config = wait_for_config(path, poll_s=0.05, sleep=sleep)
    assert config.model_dump_json() == full
    assert naps == [0.05] * 3


def test_a_vm_without_a_sandbox_refuses_runs_in_one_line(agent_client: TestClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # No bubblewrap: not the artifacts image.
    monkeypatch.setattr("shutil.which", lambda _name: None)
    body = {"run_id": "r1", "language": "python", "entry": "main.py",
            "files": [{"path": "main.py", "content": "print(1)"}]}
    refused = agent_client.post("/runs", json=body, headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("this VM has no sandbox (bubblewrap)")
