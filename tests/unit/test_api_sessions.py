"""Dev sessions and projects over the REST API, on libvirt's test driver: the same
calls as ``somnus session`` / ``somnus project``, HTTP statuses from the error hierarchy.
Promotion and project creation need a real VM; here only their refusals are checked."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.unit.test_api import (  # noqa: F401  (fixtures)
    _protected_requests,
    api,
    api_app,
    assert_error,
    auth,
)

FIRST = "Here it is:\n```python app.py\nprint('hello')\n```\n"
SECOND = "Better:\n```python app.py\nprint('hello, world')\n```\n"


def new_session(api: TestClient, **body: Any) -> dict[str, Any]:  # noqa: F811
    response = api.post("/sessions", json={"title": "api test", "user_id": "ann", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_new_routes_need_the_token(api_app: FastAPI) -> None:  # noqa: F811
    requests = _protected_requests(api_app)
    paths = {path for _, path in requests}
    assert any(p.startswith("/sessions") for p in paths)
    assert any(p.startswith("/projects") for p in paths)
    client = TestClient(api_app)
    for method, path in requests:
        if path.startswith(("/sessions", "/projects")):
            assert_error(client.request(method, path, json={}), 401, "Unauthorized")


def test_session_create_list_show_turns_diff_rollback(api: TestClient) -> None:  # noqa: F811
    created = new_session(api)
    sid = created["dev_session_id"]
    assert created["status"] == "active" and created["user_id"] == "ann"
    listed = api.get("/sessions").json()
    assert [s["dev_session_id"] for s in listed] == [sid]
    assert api.get("/sessions", params={"status": "paused"}).json() == []
    assert api.get("/sessions", params={"user": "bob"}).json() == []

    turn = api.post(f"/sessions/{sid[:8]}/turns", json={"prompt": "hello", "answer": FIRST})
    assert turn.status_code == 201, turn.text
    [change] = turn.json()["changes"]
    assert change["block"]["filename"] == "app.py" and change["block"]["version"] == 1
    block_id = change["block"]["block_id"]

    second = api.post(f"/sessions/{sid}/turns", json={"prompt": "more", "answer": SECOND})
    [change] = second.json()["changes"]
    assert change["block"]["block_id"] == block_id and change["block"]["version"] == 2
    assert "+print('hello, world')" in change["diff"]

    shown = api.get(f"/sessions/{sid[:8]}").json()
    assert shown["dev_session_id"] == sid and shown["summary"]["block_count"] == 1
    assert shown["summary"]["event_count"] == len(api.get(f"/sessions/{sid}/events").json())
    [block] = shown["code_blocks"]
    assert block["path"] == "app.py" and block["version"] == 2

    v1 = api.get(f"/sessions/{sid}/blocks/app.py", params={"version": 1}).json()
    assert v1["version"] == 1 and v1["content"] == "print('hello')\n"
    assert api.get(f"/sessions/{sid}/blocks/{block_id[:8]}").json()["version"] == 2
    assert_error(api.get(f"/sessions/{sid}/blocks/app.py", params={"version": 9}),
                 404, "NotFound")

    diff = api.get(f"/sessions/{sid}/blocks/app.py/diff").json()
    assert diff["block_id"] == block_id
    assert "-print('hello')" in diff["diff"] and "+print('hello, world')" in diff["diff"]
    whole = api.get(f"/sessions/{sid}/blocks/app.py/diff", params={"from": 0, "to": 1}).json()
    assert "+print('hello')" in whole["diff"]

    rolled = api.post(f"/sessions/{sid}/blocks/app.py/rollback", json={"to": 1})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["block"]["version"] == 3
    assert rolled.json()["block"]["content"] == "print('hello')\n"
    assert_error(api.post(f"/sessions/{sid}/blocks/app.py/rollback", json={"to": 1}),
                 409, "Conflict")  # already has that content
    events = [e["event_type"] for e in api.get(f"/sessions/{sid}/events").json()]
    assert events[0] == "session_start" and events[-1] == "code_block_rolled_back"


def test_status_transitions(api: TestClient) -> None:  # noqa: F811
    sid = new_session(api)["dev_session_id"]

    def act(action: str) -> Any:
        return api.post(f"/sessions/{sid}/status", json={"action": action})

    assert act("pause").json()["status"] == "paused"
    assert_error(api.post(f"/sessions/{sid}/turns", json={"prompt": "p", "answer": FIRST}),
                 409, "Conflict")  # a paused session's code does not change
    assert_error(act("pause"), 409, "Conflict")  # already paused
    assert act("resume").json()["status"] == "active"
    completed = act("complete").json()
    assert completed["status"] == "completed" and completed["end_time"]
    assert_error(act("resume"), 409, "Conflict")  # completed: only archive or promote
    assert act("archive").json()["status"] == "archived"
    assert_error(act("pause"), 409, "Conflict")  # archived is final
    assert_error(act("promote"), 422, "InvalidInput")  # promotion has its own route
    assert_error(api.post(f"/sessions/{sid}/status", json={"action": "pause", "x": 1}),
                 422, "InvalidInput")


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("GET", "/sessions/0123abcd", None, 404, "NotFound"),
    ("GET", "/sessions/not-hex!", None, 422, "InvalidInput"),
    ("GET", "/sessions/0123abcd/events", None, 404, "NotFound"),
    ("POST", "/sessions/0123abcd/turns", {"prompt": "p", "answer": "a"}, 404, "NotFound"),
    ("POST", "/sessions/0123abcd/promote", {"project": "proj"}, 404, "NotFound"),
    ("POST", "/sessions/0123abcd/promote", {"project": "Bad_Name"}, 422, "InvalidInput"),
    ("POST", "/sessions", {"title": "x", "colour": "teal"}, 422, "InvalidInput"),
    ("POST", "/sessions", {"title": "   "}, 422, "InvalidInput"),
    ("GET", "/projects/nope", None, 404, "NotFound"),
    ("POST", "/projects/nope/undo", None, 404, "NotFound"),
    ("POST", "/projects/nope/archive", None, 404, "NotFound"),
    ("POST", "/projects/nope/restore", None, 404, "NotFound"),
    ("POST", "/projects/nope/snapshots", {"name": "snap"}, 404, "NotFound"),
    ("POST", "/projects/nope/snapshots/snap/rollback", None, 404, "NotFound"),
    ("DELETE", "/projects/nope", None, 404, "NotFound"),
    ("GET", "/projects/Bad_Name", None, 422, "InvalidInput"),
    ("POST", "/projects", {"name": "proj", "memory_mib": 1}, 422, "InvalidInput"),
])
def test_bad_session_and_project_requests(api: TestClient,  # noqa: F811
                                          method: str, path: str, body: Any,
                                          status: int, error: str) -> None:
    assert_error(api.request(method, path, json=body), status, error)
    assert api.get("/operations").json() == []  # nothing was started


def test_promote_needs_a_known_session(api: TestClient) -> None:  # noqa: F811
    new_session(api)
    assert_error(api.post("/sessions/ffffffff/promote", json={"project": "proj"}),
                 404, "NotFound")


def test_projects_empty_and_gc(api: TestClient) -> None:  # noqa: F811
    assert api.get("/projects").json() == []
    assert api.post("/projects/gc", json={"dry_run": True}).json() == {
        "orphan_records": [], "stale_temp": [], "expired": [], "dry_run": True}
    assert api.post("/projects/gc").json()["dry_run"] is False
