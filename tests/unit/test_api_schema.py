"""Schemathesis against the API's own OpenAPI document, on the test-driver-backed app.

Every check schemathesis has (the CLI's ``--checks all``) over every operation, in every
phase (schema examples, coverage, fuzzing, stateful chains through links and Location
headers), for a few fixed seeds: generated requests, valid and invalid, sent with the
token, must be accepted or refused exactly as the document says, and every response
(statuses, headers, media types, bodies, each server-sent event) must be documented.

Two settings go beyond the defaults, both to documented statuses. The 5xx the error
hierarchy gives on purpose (a guest that does not answer, a VM that never gets ready:
the test driver boots none, too little memory budget) are not server errors; a 500 is
a bug and fails. And a 413 (an invalid body too big even to read) is a rejection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import StopReason, events, from_schema
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.routes.common import ERRORS
from core.config import Settings
from core.errors import GuestError
from guest_agent.protocol import ChatCompletionChunk, ChatCompletionRequest
from images import builder
from images.catalog import ImageManifest
from tests.fakes import StandInAgent
from tests.unit.test_api import api, api_app, auth, create, wait_op  # noqa: F401  (fixtures)

SEEDS = (7, 1234, 90210)
MAX_EXAMPLES = 30  # per operation and phase; the default is 100, the old test had 5
NDJSON = "application/x-ndjson"
DOCUMENTED_5XX = [str(code) for code in ERRORS if code >= 500]


@schemathesis.serializer(NDJSON)
def _json_lines(_: Any, value: Any) -> bytes:
    """The document reads JSON lines as an array of their items (OpenAPI 3.2's rule)."""
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


@schemathesis.deserializer(NDJSON)
def _read_json_lines(_: Any, response: Any) -> list[Any]:
    lines = response.content.decode().split("\n")  # LF only: JSON Lines' rule
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def quick(settings: Settings, api_app: FastAPI, image: ImageManifest,  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The app, with no readiness waits and a stand-in for the image build (real work:
    mmdebstrap, minutes).

    The test driver boots no guest: each stage passes at its first look (the domain
    runs, the stand-in agent answers) or never (SSH). A stage looks once before its
    deadline, so a 0 s timeout keeps every outcome and drops the second of sleep that a
    short one still costs per readiness wait (thousands of them in a run).
    """
    for stage in ("domain", "ssh", "cloud_init", "agent"):
        setattr(settings, f"timeout_{stage}_s", 0.0)
    monkeypatch.setattr(builder, "build_image", lambda *_a, **_k: image)
    return api_app


def _schema(app: FastAPI, auth: dict[str, str], seed: int) -> Any:  # noqa: F811
    """The app's document, configured as ``schemathesis run --checks all --seed SEED``."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig())
    config = schema.config
    config.seed = seed
    config.update(headers=auth)
    config.checks.update(included_check_names=["all"])
    config.checks.not_a_server_error.expected_statuses = ["2xx", "3xx", "4xx", *DOCUMENTED_5XX]
    rejections = config.checks.negative_data_rejection
    rejections.expected_statuses = [*rejections.expected_statuses, "413"]
    config.generation.update(max_examples=MAX_EXAMPLES, database="none")
    return schema


def _failures(event: events.ScenarioFinished) -> Iterator[str]:
    for case_id, nodes in event.recorder.checks.items():
        for node in nodes:
            if node.failure_info is None:
                continue
            failure = node.failure_info.failure
            response = event.recorder.find_response(case_id=case_id)
            got = (f"{response.status_code} {dict(response.headers)} "
                   f"{response.content[:300]!r}" if response else "no response")
            yield (f"[{event.phase.value}] {node.name} on {failure.operation}: {failure.title}"
                   f"\n{failure.message}\n{node.failure_info.code_sample}\n-> {got}")


def run(schema: Any) -> tuple[list[str], set[str]]:
    """Every phase of a run: its failures and errors, and the operations it tested."""
    problems: list[str] = []
    tested: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            problems.extend(_failures(event))
        elif isinstance(event, events.NonFatalError):
            problems.append(f"error in {event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            problems.extend(str(f) for f in event.failures)
            if event.stop_reason is not StopReason.COMPLETED:
                problems.append(f"stopped early: {event.stop_reason.value}")
    return problems, tested


@pytest.mark.parametrize("seed", SEEDS)
def test_the_api_keeps_its_contract(quick: FastAPI, auth: dict[str, str],  # noqa: F811
                                    seed: int) -> None:
    schema = _schema(quick, auth, seed)
    problems, tested = run(schema)
    assert not problems, f"{len(problems)} problems:\n\n" + "\n\n".join(problems)
    operations = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items()
                  for method in item}
    assert operations <= tested, f"never tested: {sorted(operations - tested)}"


def test_the_document_states_the_headers_the_api_sends(api: TestClient) -> None:  # noqa: F811
    """401s name the scheme, 202s the operation, 405s every method of the path."""
    document = api.app.openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if path == "/health":
                assert "401" not in responses and "security" not in operation
                continue
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"], (method, path)
            if "202" in responses:
                assert responses["202"]["headers"]["Location"]["required"], (method, path)
    refused = TestClient(api.app).get("/vms")
    assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
    for method in ("OPTIONS", "PUT", "DELETE"):
        response = api.request(method, "/vms")
        assert (response.status_code, response.headers["allow"]) == (405, "GET, POST")
    assert api.put("/vms/chat").headers["allow"] == "DELETE, GET"
    # A literal path beside a template is its own resource, and no project takes its name.
    assert api.options("/projects/gc").headers["allow"] == "POST"
    for method in ("GET", "DELETE"):  # /projects/{name} would take them, but 'gc' is no name
        response = api.request(method, "/projects/gc")
        assert (response.status_code, response.headers["allow"]) == (405, "POST")


# -- server-sent events, case by case -----------------------------------------------------
# The run above follows operations' events; a chat stream needs a VM whose agent answers,
# which its generated requests rarely reach, so these make one and validate every event.


def _validated(schema: Any, auth: dict[str, str], path: str, method: str,  # noqa: F811
               **parts: Any) -> str:
    case = schema[path][method].Case(**parts)
    response = case.call(headers=dict(auth))
    case.validate_response(response, checks=[response_schema_conformance])
    assert response.status_code == 200
    assert response.headers["content-type"][0].startswith("text/event-stream")
    return response.content.decode()


def test_every_chat_event_matches_its_schema(api: TestClient, auth: dict[str, str],  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, config=SchemathesisConfig())
    create(api, "chat")
    wait_op(api, api.post("/vms/chat/activate").json())
    body = {"message": "hello there", "stream": True}
    text = _validated(schema, auth, "/chat", "POST", body=body)
    assert text.rstrip().endswith("data: [DONE]")

    def breaks_midway(self: StandInAgent, request: ChatCompletionRequest
                      ) -> Iterator[ChatCompletionChunk]:
        yield ChatCompletionChunk.model_validate(
            {"id": "c", "created": 1, "model": "m", "choices": [{"delta": {"role": "assistant"}}]})
        raise GuestError("agent chat stream broke: connection reset")

    monkeypatch.setattr(StandInAgent, "chat_stream", breaks_midway)
    text = _validated(schema, auth, "/vms/{name}/chat", "POST", path_parameters={"name": "chat"},
                      body=body)
    assert "event: error" in text


def test_every_operation_event_matches_its_schema(api: TestClient,  # noqa: F811
                                                  auth: dict[str, str]) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, config=SchemathesisConfig())
    ok = create(api, "chat")
    failed = wait_op(api, api.post("/vms/chat/start").json())  # it runs already
    assert (ok["state"], failed["state"]) == ("succeeded", "failed")
    for op, seen in ((ok, -1), (ok, 0), (failed, -1)):
        text = _validated(schema, auth, "/operations/{op_id}/events", "GET",
                          path_parameters={"op_id": op["id"]},
                          headers={"Last-Event-ID": str(seen)})
        assert f"event: {op['state']}" in text
