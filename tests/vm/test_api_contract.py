"""Schemathesis over the API's reads on real libvirt (``qemu:///system``): every check,
every GET operation, the unit test's seeds, against a Host of its own.

Read-only by construction: the Host has an empty home and a domain prefix no other
run uses, so there is no VM to act on and nothing to clean up; every operation but the
GETs is excluded (schemathesis never sends an excluded request, not even as an
"unsupported method" probe), and a gate in front of the app refuses and records any
request with a method the document declares anywhere but GET (POST, PUT, DELETE) that
would still come. Undeclared methods (PATCH, say) go through: the app's 405 is part of
the contract. No image is needed.

Unlike the unit run, no 5xx is expected here: with no VM, a 503 means libvirt failed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from starlette.types import ASGIApp, Receive, Scope, Send

from api import create_app
from api.auth import ensure_token
from core.config import Settings
from orchestrator.host import Host
from tests.unit.test_api_schema import MAX_EXAMPLES, SEEDS, run

pytestmark = pytest.mark.vm



class ReadOnlyGate:
    """Answers 405 to any request with a ``mutating`` method instead of passing it on,
    and remembers it."""

    def __init__(self, app: ASGIApp, mutating: frozenset[str]) -> None:
        self.app = app
        self.mutating = mutating
        self.refused: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.mutating:
            self.refused.append(f"{scope['method']} {scope['path']}")
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"allow", b"GET"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


@pytest.fixture
def reads_host() -> Iterator[Host]:
    """A real Host over an empty home; its domain prefix is this process's own."""
    home = Path(tempfile.mkdtemp(prefix="somnus-contract-", dir="/var/tmp"))
    settings = Settings(home=home, libvirt_uri="qemu:///system",
                        domain_prefix=f"somnus-c{os.getpid()}-",
                        port_range_start=45000, port_range_end=45999)
    host = Host(settings)
    try:
        yield host
    finally:
        host.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_read_keeps_the_contract_on_real_libvirt(reads_host: Host, seed: int) -> None:
    settings = reads_host.settings
    assert reads_host.hypervisor().domain_names(settings.domain_prefix) == []
    app = create_app(settings, host=reads_host)
    mutating = frozenset(method.upper() for item in app.openapi()["paths"].values()
                         for method in item if method != "get")
    # What the gate must stop (PUT: the security policy). A new one: look again.
    assert mutating == {"POST", "PUT", "DELETE"}
    gate = ReadOnlyGate(app, mutating)
    schema = schemathesis.openapi.from_asgi("/openapi.json", gate, config=SchemathesisConfig())
    reads = schema.exclude(method=sorted(mutating))
    config = reads.config
    config.seed = seed
    config.update(headers={"Authorization": f"Bearer {ensure_token(settings)}"})
    config.checks.update(included_check_names=["all"])
    config.generation.update(max_examples=MAX_EXAMPLES, database="none")
    # Chains of reads alone create nothing to follow; the other phases cover each GET.
    config.phases.update(phases=["examples", "coverage", "fuzzing"])

    problems, tested = run(reads)

    assert not problems, f"{len(problems)} problems:\n\n" + "\n\n".join(problems)
    gets = {f"GET {path}" for path, item in schema.raw_schema["paths"].items() if "get" in item}
    assert tested == gets, f"untested: {sorted(gets - tested)}, not GETs: {sorted(tested - gets)}"
    assert gate.refused == [], f"mutations were attempted: {gate.refused}"
    assert reads_host.hypervisor().domain_names(settings.domain_prefix) == []
    assert reads_host.store.list_vms() == []
