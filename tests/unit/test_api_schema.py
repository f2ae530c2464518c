"""Schemathesis against the API's own OpenAPI document, on the test-driver-backed app:
generated requests, valid and invalid, sent with a valid token, must never get a
5xx, and every response must match the schema. Bounded: a few examples per
operation and mode."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from api.routes import ROUTERS
from images import builder
from images.catalog import ImageManifest
from tests.unit.test_api import api_app, auth  # noqa: F401  (fixtures)

MAX_EXAMPLES = 5
# Memory import takes JSON lines: text, as far as generated bodies go.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
ROUTES = [(method, route) for router in ROUTERS for route in router.routes
          if isinstance(route, APIRoute) for method in route.methods]
OPERATIONS = sorted((method, route.path) for method, route in ROUTES)


def takes_input(route: APIRoute) -> bool:
    """Whether a request to the route has anything (parameters, body) to make invalid."""
    dependant = route.dependant
    return bool(dependant.path_params or dependant.query_params or dependant.body_params
                or dependant.header_params)


# Negative cases only where there is something to invalidate (not e.g. GET /health).
CASES = sorted([(m, r.path, GenerationMode.POSITIVE) for m, r in ROUTES]
               + [(m, r.path, GenerationMode.NEGATIVE) for m, r in ROUTES if takes_input(r)],
               key=lambda c: (c[0], c[1], c[2].value))


@pytest.fixture
def api_schema(api_app: FastAPI, agents: Any, image: ImageManifest,  # noqa: F811
               monkeypatch: pytest.MonkeyPatch) -> Any:
    # An image build is real work (mmdebstrap, minutes): the operation gets a stand-in.
    monkeypatch.setattr(builder, "build_image", lambda *_a, **_k: image)
    return schemathesis.openapi.from_asgi("/openapi.json", api_app)


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_the_api_keeps_to_its_schema(api_schema: Any, auth: dict[str, str],  # noqa: F811
                                     method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=auth)

    conforms()
