"""Structured output with the real model (SmolLM2 on the host): a response_format turns
into a grammar, and what comes back parses and follows the schema; a schema the
converter cannot take is one 400 line, before any decoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from guest_agent.protocol import ResponseFormat
from guest_agent.structured import BadSchema, grammar_for
from tests.unit.conftest import AUTH, chat_body

ACTION = {"type": "object",
          "properties": {"action": {"enum": ["say", "final"]},
                         "content": {"type": "string", "maxLength": 60}},
          "required": ["action", "content"]}


def answer(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_json_schema_answer_parses_and_follows_the_schema(agent_client: TestClient) -> None:
    body = chat_body("Is the sky blue? Answer as the final action.", max_tokens=48)
    body["response_format"] = {"type": "json_schema",
                               "json_schema": {"name": "turn", "schema": ACTION}}
    result = answer(agent_client, body)
    text = result["choices"][0]["message"]["content"]
    assert result["choices"][0]["finish_reason"] == "stop", text
    parsed = json.loads(text)
    assert set(parsed) == {"action", "content"} and parsed["action"] in ("say", "final")
    assert len(parsed["content"]) <= 60


def test_json_object_streams_json_and_a_schema_may_ride_along(agent_client: TestClient) -> None:
    body = chat_body("Name one colour.", max_tokens=40)
    body["response_format"] = {"type": "json_object", "schema": {
        "type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}},
        "required": ["colour"]}}
    body["stream"] = True
    with agent_client.stream("POST", "/v1/chat/completions", json=body,
                             headers=AUTH) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["delta"].get("content") or ""
              for e in events[:-1] if "choices" in json.loads(e)]
    assert list(json.loads("".join(pieces))) == ["colour"]


def test_any_json_without_a_schema() -> None:
    assert grammar_for(ResponseFormat(type="json_object")) is not None
    assert grammar_for(ResponseFormat(type="text")) is None
    assert grammar_for(None) is None


@pytest.mark.parametrize(("response_format", "words"), [
    ({"type": "json_schema"}, "needs json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}},
     "not supported"),
])
def test_a_schema_that_cannot_be_a_grammar_is_one_400_line(
        agent_client: TestClient, response_format: dict[str, Any], words: str) -> None:
    body = chat_body("hello") | {"response_format": response_format}
    response = agent_client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400 and words in response.json()["error"]
    assert "\n" not in response.json()["error"]
    with pytest.raises(BadSchema):
        grammar_for(ResponseFormat.model_validate(response_format))
