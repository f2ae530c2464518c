"""The app's server side on libvirt's test driver: the page and its assets, offline docs,
the browser login (cookie, CSRF, one-time links), and the live feed ``/events``.
The browser itself is driven in ``tests/unit/test_app_browser.py`` and ``tests/vm``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.auth import ensure_token, rotate_token
from api.routes.web import WEB_DIR
from core.config import Settings
from orchestrator import errors_log
from orchestrator.host import Host
from tests.unit.test_api import api, api_app, auth, create, wait_op  # noqa: F401  (fixtures)

# A URL off the machine: with a scheme, or protocol-relative inside quotes or url().
EXTERNAL = re.compile(r"""(?:https?:|["'(])//(?!127\.0\.0\.1|localhost)[a-z0-9.-]+\.[a-z]{2,}""",
                      re.I)


@pytest.fixture
def browser(api_app: FastAPI) -> Iterator[TestClient]:  # noqa: F811
    """A client with no bearer token: what a browser is before it logs in."""
    with TestClient(api_app) as client:
        yield client


def log_in(client: TestClient, settings: Settings) -> str:
    response = client.post("/app/login", json={"token": ensure_token(settings)})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf"])


# -- the page and the documentation, offline ----------------------------------------------

def test_the_page_and_its_assets_need_no_login_and_refer_to_nothing_off_the_machine(
        browser: TestClient) -> None:
    page = browser.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', page.text)
    assert scripts and all(s.startswith("/app/static/") for s in scripts)
    assert browser.get(scripts[0]).status_code == 200
    for path in WEB_DIR.rglob("*"):
        if path.is_file():
            found = EXTERNAL.findall(path.read_text(errors="replace"))
            assert not [u for u in found if "w3.org" not in u], (path, found)


def test_the_api_documentation_is_served_with_local_assets(browser: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = browser.get(page).text
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert assets, html
        for asset in assets:
            assert asset.startswith("/app/docs-static/"), (page, asset)
            assert browser.get(asset).status_code == 200, asset
        assert "fonts.googleapis" not in html and "cdn" not in html.lower()


# -- login ------------------------------------------------------------------------------

def test_a_wrong_token_is_refused_and_sets_no_cookie(browser: TestClient) -> None:
    response = browser.post("/app/login", json={"token": "not-the-token"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert browser.get("/vms").status_code == 401
    assert browser.get("/app/session").status_code == 401


def test_login_sets_an_httponly_strict_cookie_that_reads_but_needs_csrf_to_change(
        browser: TestClient, settings: Settings) -> None:
    response = browser.post("/app/login", json={"token": ensure_token(settings)})
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    csrf = response.json()["csrf"]
    assert browser.get("/vms").status_code == 200  # the cookie alone reads
    assert browser.get("/app/session").json()["csrf"] == csrf
    refused = browser.post("/app/logout")
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
    wrong = browser.post("/app/logout", headers={"X-CSRF-Token": csrf[::-1]})
    assert wrong.status_code == 403
    assert browser.post("/app/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert browser.get("/vms").status_code == 401  # the session ended


def test_a_bearer_request_needs_no_csrf_token(api: TestClient) -> None:  # noqa: F811
    assert api.post("/app/logout").status_code == 204
    assert api.get("/app/session").status_code == 404  # a bearer request has no session


def test_a_login_link_works_once(browser: TestClient, api: TestClient) -> None:  # noqa: F811
    link = api.post("/app/links")
    assert link.status_code == 201
    path = "/" + link.json()["url"].split("/", 3)[3]
    first = browser.get(path, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "HttpOnly" in first.headers["set-cookie"]
    assert browser.get("/app/session").status_code == 200
    browser.cookies.clear()
    again = browser.get(path, follow_redirects=False)
    assert again.status_code == 401 and "somnus app" in again.text


def test_rotating_the_token_logs_every_browser_out(browser: TestClient,
                                                   settings: Settings) -> None:
    log_in(browser, settings)
    assert browser.get("/vms").status_code == 200
    time.sleep(0.01)  # a new mtime for the token file
    rotate_token(settings)
    assert browser.get("/vms").status_code == 401


# -- reads the views use -----------------------------------------------------------------

def test_swaps_and_samples_read_the_ledger_and_the_monitor(
        api: TestClient, host: Host) -> None:  # noqa: F811
    wait_op(api, create(api, "alpha"))
    wait_op(api, api.post("/vms/alpha/activate").json())
    swaps = api.get("/swaps").json()
    assert swaps[0]["to_vm"] == "alpha" and swaps[0]["outcome"] == "done"
    host.security.store.add_sample("alpha", 1000.0, {"cpu_percent": 12.5}, keep=10)
    samples = api.get("/security/vms/alpha/samples").json()
    assert samples == [{"at": 1000.0, "metrics": {"cpu_percent": 12.5}}]
    assert api.get("/security/vms/nope/samples").status_code == 404


# -- the live feed -----------------------------------------------------------------------

def read_events(lines: Iterator[str], wanted: set[str], timeout_s: float = 20) -> dict[str, Any]:
    """The first event of each name in ``wanted`` from an event stream's lines."""
    found: dict[str, Any] = {}
    name = "message"
    deadline = time.monotonic() + timeout_s
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            if name in wanted and name not in found:
                found[name] = json.loads(line[5:])
            name = "message"
        if set(found) == wanted or time.monotonic() > deadline:
            break
    return found


def test_the_feed_sends_status_then_swaps_samples_and_errors_as_they_happen(
        api: TestClient, host: Host) -> None:  # noqa: F811
    wait_op(api, create(api, "alpha"))
    with api.stream("GET", "/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = read_events(lines, {"status"})
        assert [vm["name"] for vm in first["status"]["vms"]] == ["alpha"]
        seq = host.store.open_swap(None, "alpha").seq
        host.security.store.add_sample("alpha", 2000.0, {"rss_mib": 300.0}, keep=10)
        errors_log.add_error(host.store, "alpha", "test", "a recorded failure")
        later = read_events(lines, {"swap", "sample", "vm_error"})
    assert later["swap"]["seq"] == seq and later["swap"]["to_vm"] == "alpha"
    assert later["sample"] == {"vm": "alpha", "at": 2000.0, "metrics": {"rss_mib": 300.0}}
    assert later["vm_error"]["message"] == "a recorded failure"


def test_the_feed_needs_a_login(browser: TestClient) -> None:
    assert browser.get("/events").status_code == 401


def test_web_assets_are_packaged() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'api = ["web/**/*"]' in pyproject


# -- somnus app --------------------------------------------------------------------------

def test_somnus_app_starts_a_server_once_and_prints_links_that_log_in(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SOMNUS_HOME": str(tmp_path / "home"),
           "SOMNUS_CACHE": str(tmp_path / "cache"), "SOMNUS_LIBVIRT_URI": "test:///default"}
    somnus = [sys.executable, "-m", "cli", "app", "--json", "--port", str(port)]
    first = subprocess.run(somnus, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    link = json.loads(first.stdout)
    pid = link["started_pid"]
    try:
        assert pid and link["url"].startswith(f"http://127.0.0.1:{port}/app/login/")
        second = json.loads(subprocess.run(somnus, env=env, capture_output=True, text=True,
                                           timeout=60, check=True).stdout)
        assert second["started_pid"] is None and second["url"] != link["url"]
        with httpx.Client() as browser:
            answer = browser.get(link["url"], follow_redirects=False)
            assert answer.status_code == 303 and "HttpOnly" in answer.headers["set-cookie"]
            assert browser.get(f"http://127.0.0.1:{port}/vms").status_code == 200
    finally:
        os.killpg(pid, signal.SIGTERM)
