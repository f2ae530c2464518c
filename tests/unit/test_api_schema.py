"""Schemathesis against the API's own OpenAPI document, on the test-driver-backed app."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from images import builder
from images.catalog import ImageManifest
from tests.unit.test_api import api_app, auth  # noqa: F401  (fixtures)

SEEDS = [1, 2, 3]
MAX_EXAMPLES = 10
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


def run_schema(schema: Any) -> tuple[list[str], dict[str, int]]:
    problems: list[str] = []
    stats: dict[str, int] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            stats[event.phase.value] = stats.get(event.phase.value, 0) + 1
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    if node.failure_info is not None:
                        f = node.failure_info.failure
                        r = event.recorder.find_response(case_id=case_id)
                        got = f"{r.status_code} {r.headers} {r.content[:400]!r}" if r else "-"
                        problems.append(f"[{event.phase.value}] {node.name} {f.operation}: {f.title}\n{f.message}\n{node.failure_info.code_sample}\nGOT {got}")
        elif isinstance(event, events.NonFatalError):
            import traceback
            problems.append(f"error {event.label}: {event.info.title} {event.info.message}" + "".join(traceback.format_exception(event.value)))
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            problems.extend(str(f) for f in event.failures)
    return problems, stats


@pytest.mark.parametrize("seed", SEEDS)
def test_the_api_keeps_its_contract(api_app: FastAPI, auth: dict[str, str],  # noqa: F811
                                    agents: Any, image: ImageManifest,
                                    monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(builder, "build_image", lambda *_a, **_k: image)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app, config=SchemathesisConfig())
    project = schema.config
    project.seed = seed
    project.update(headers=auth)
    project.checks.update(included_check_names=["all"])
    project.generation.update(max_examples=MAX_EXAMPLES, database="none")
    problems, stats = run_schema(schema)
    print(stats)
    for p in problems:
        print(p)
        print("-----")
    assert not problems
