"""``/artifacts``: the CLI's verbs over REST; a run streams its events as SSE and stays
readable with its output and files. The artifacts VM is the test driver's with the
stand-in agent, whose runner is the real one over a process group."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from tests.unit.test_api import api, api_app, auth, wait_op  # noqa: F401  (fixtures)

CODE = ("import sys\nprint('hi', sys.argv[1])\nopen('out.txt', 'w').write(sys.stdin.read())\n"
        "sys.exit(1)\n")  # fmt: skip


def _events(body: str) -> list[Any]:
    data = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_create_run_and_read_back(api: TestClient) -> None:  # noqa: F811
    made = api.post("/artifacts", json={"name": "job", "language": "python",
                                        "files": [{"path": "main.py", "content": CODE}]})
    assert made.status_code == 201 and made.json()["entry"] == "main.py"
    op = api.post("/vms", json={"name": "artifacts", "subsystem": "artifacts",
                                "memory_mib": 256, "wait": False})
    assert wait_op(api, op.json())["state"] == "succeeded"
    ran = api.post("/artifacts/job/runs", json={"args": ["there"], "stdin": "data"})
    assert ran.status_code == 200, ran.text
    assert ran.headers["content-type"].startswith("text/event-stream")
    events = _events(ran.text)
    assert "".join(e.get("data", "") for e in events if e["kind"] == "stdout") == "hi there\n"
    result = events[-1]["result"]
    assert (result["outcome"], result["exit_code"]) == ("failed", 1)
    (run,) = api.get("/artifacts/job/runs").json()
    assert run["outcome"] == "failed" and run["result"]["files"][0]["path"] == "out.txt"
    log = api.get(f"/artifacts/runs/{run['id']}").json()
    assert [e["kind"] for e in log["events"]] == [e["kind"] for e in events]
    assert api.get(f"/artifacts/runs/{run['id']}/file", params={"path": "out.txt"}).text == "data"
    escape = api.get(f"/artifacts/runs/{run['id']}/file", params={"path": "../../somnus.db"})
    assert escape.status_code == 404
    # A new version; the detail shows both and the latest files.
    assert api.post("/artifacts/job/versions", json={
        "files": [{"path": "main.py", "content": "print(2)"}], "message": "two"},
    ).json()["number"] == 2
    detail = api.get("/artifacts/job").json()
    assert [v["number"] for v in detail["versions"]] == [1, 2]
    assert detail["files"][0]["content"] == "print(2)"
    assert api.delete("/artifacts/job").status_code == 204
    assert api.get("/artifacts/job").status_code == 404


def test_refusals_are_errors_before_any_event(api: TestClient) -> None:  # noqa: F811
    api.post("/artifacts", json={"name": "job", "language": "python",
                                 "files": [{"path": "main.py", "content": "pass"}]})
    no_vm = api.post("/artifacts/job/runs", json={})
    assert no_vm.status_code == 409 and "--subsystem artifacts" in no_vm.json()["detail"]
    bad_limit = api.post("/artifacts/job/runs", json={"limits": {"gpus": 1}})
    assert bad_limit.status_code == 422 and "gpus" in bad_limit.text
    assert api.post("/artifacts", json={"name": "Bad Name", "language": "python",
                                        "files": [{"path": "a.py", "content": ""}]},
                    ).status_code == 422
    assert api.post("/artifacts", json={"name": "job", "language": "python",
                                        "files": [{"path": "main.py", "content": ""}]},
                    ).status_code == 409
