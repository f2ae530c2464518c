"""The artifacts VM's web port on the host: static files, a program's server reached
through the relay's Unix socket (the real relay, as the sandbox runs it), switching
what is open, and refusals. The sandboxed server itself runs in tests/vm."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from guest_agent.protocol.runs import Language, RunLimits, SourceFile, WebMode, WebRequest
from guest_agent.sandbox import relay
from guest_agent.sandbox.cgroups import ProcessGroupJail
from guest_agent.sandbox.runner import Sandbox, SandboxError
from guest_agent.sandbox.web import SocketSite, StaticSite, WebArtifacts, WebPort
from tests.fakes import plain_launcher


@pytest.fixture
def port() -> Iterator[WebPort]:
    web = WebPort(0, host="127.0.0.1")
    yield web
    web.close()


def _get(web: WebPort, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{web.port}{path}", timeout=10)


def test_nothing_open_is_a_503_that_says_how_to_open_one(port: WebPort) -> None:
    closed = _get(port)
    assert closed.status_code == 503 and "somnus artifact open" in closed.text


def test_static_files_are_served(port: WebPort, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>chart</h1>")
    (tmp_path / "data.csv").write_text("a,1\n")
    port.site = StaticSite(tmp_path)
    assert _get(port).text == "<h1>chart</h1>"
    assert _get(port, "/data.csv").text == "a,1\n"
    assert _get(port, "/missing").status_code == 404


def test_a_server_is_reached_through_the_relay_socket(port: WebPort, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("from the app")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    socket_path = tmp_path / "web.sock"
    threading.Thread(target=relay.serve, args=(str(socket_path), app.server_address[1]),
                     daemon=True).start()
    port.site = SocketSite(socket_path)
    try:
        assert _get(port, "/hello.txt").text == "from the app"
        assert [_get(port, "/hello.txt").status_code for _ in range(5)] == [200] * 5
    finally:
        app.shutdown()


def test_open_replaces_what_is_open_and_stop_closes_it(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path, ProcessGroupJail(), plain_launcher)
    web = WebArtifacts(sandbox, port=0)
    try:
        first = web.open(WebRequest(run_id="w1", language=Language.HTML, entry="index.html",
                                    files=[SourceFile(path="index.html", content="one")]))
        assert first.mode is WebMode.STATIC and _get(web.web).text == "one"
        web.open(WebRequest(run_id="w2", language=Language.HTML, entry="index.html",
                            files=[SourceFile(path="index.html", content="two")]))
        assert _get(web.web).text == "two" and web.status().run_id == "w2"  # type: ignore[union-attr]
        stopped = web.stop()
        assert stopped is not None and not stopped.running
        assert _get(web.web).status_code == 503 and web.status() is None
        with pytest.raises(SandboxError, match=r"not c$"):
            web.open(WebRequest(run_id="w3", language=Language.C, entry="a.c",
                                files=[SourceFile(path="a.c", content="")],
                                limits=RunLimits()))
    finally:
        web.web.close()
