"""The artifacts VM's web port: the one open web artifact, for the host's browser.

The orchestrator forwards a host loopback port to ``WEB_GUEST_PORT``. What answers
there is either a static site (files of a run folder, served here) or a program's
own HTTP server, reached through the Unix socket its sandbox's relay listens on
(``guest_agent.sandbox.relay``): each TCP connection is pumped to that socket as
bytes, so any HTTP the program speaks (streaming, websockets) passes unchanged.
No token here: the page is for a browser, and only the host's loopback reaches it.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from guest_agent.protocol.runs import (
    WEB_GUEST_PORT,
    WEB_SERVER_LANGUAGES,
    Language,
    RunEvent,
    RunEventKind,
    WebMode,
    WebRequest,
    WebStatus,
)
from guest_agent.sandbox.relay import pump
from guest_agent.sandbox.runner import Sandbox, SandboxError

log = logging.getLogger(__name__)
UNIX_CONNECT_WAIT_S = 30.0
STOP_WAIT_S = 10.0
CLOSED_PAGE = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
               b"Connection: close\r\n\r\nNo web artifact is open: 'somnus artifact open NAME'.\n")


@dataclass(frozen=True)
class StaticSite:
    folder: Path


@dataclass(frozen=True)
class SocketSite:
    path: Path


Site = StaticSite | SocketSite


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _connect_unix(path: Path) -> socket.socket | None:
    """The relay's socket, waiting while the program starts (None if it never comes)."""
    deadline = time.monotonic() + UNIX_CONNECT_WAIT_S
    while True:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(str(path))
            return upstream
        except OSError:
            upstream.close()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


class WebPort:
    """A threaded listener whose site can be switched while it runs."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.site: Site | None = None
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner.handle(self.request, self.client_address, self.server)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="web-port",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def handle(self, conn: socket.socket, address: Any, server: socketserver.BaseServer) -> None:
        site = self.site
        if isinstance(site, StaticSite):
            _QuietFiles(conn, address, server, directory=str(site.folder))
        elif isinstance(site, SocketSite) and (upstream := _connect_unix(site.path)):
            back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
            back.start()
            pump(conn, upstream)
            back.join()
        else:
            conn.sendall(CLOSED_PAGE)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class _Open:
    status: WebStatus
    cancel: threading.Event | None = None
    thread: threading.Thread | None = None


class WebArtifacts:
    """The open web artifact: staged like a run, then served on the web port."""

    def __init__(self, sandbox: Sandbox, port: int = WEB_GUEST_PORT,
                 host: str = "0.0.0.0") -> None:
        self.sandbox = sandbox
        self.web = WebPort(port, host)
        self._open: _Open | None = None
        self._lock = threading.Lock()

    def open(self, request: WebRequest) -> WebStatus:
        """Open ``request`` in place of what is open (that one is stopped first)."""
        if request.language is not Language.HTML and request.language not in WEB_SERVER_LANGUAGES:
            raise SandboxError(f"a web artifact is static HTML, or a server in "
                               f"{' or '.join(sorted(WEB_SERVER_LANGUAGES))}; "
                               f"not {request.language}")  # fmt: skip
        with self._lock:
            self._stop()
            if request.language is Language.HTML:
                folder = self.sandbox.stage(request)
                opened = _Open(WebStatus(run_id=request.run_id, mode=WebMode.STATIC,
                                         entry=request.entry, started_at=time.time(),
                                         running=True))  # fmt: skip
                self.web.site = StaticSite(folder.work)
            else:
                cancel = threading.Event()
                folder, events = self.sandbox.serve(request, cancel,
                                                    self.sandbox.folder(request.run_id).log)
                opened = _Open(WebStatus(run_id=request.run_id, mode=WebMode.SERVER,
                                         entry=request.entry, started_at=time.time(),
                                         running=True), cancel)  # fmt: skip
                opened.thread = threading.Thread(target=self._follow, args=(opened, events),
                                                 name=f"web-{request.run_id}", daemon=True)
                opened.thread.start()
                self.web.site = SocketSite(folder.web_socket)
            self._open = opened
            return opened.status

    def _follow(self, opened: _Open, events: Iterator[RunEvent]) -> None:
        for event in events:
            if event.kind is RunEventKind.RESULT:
                opened.status = opened.status.model_copy(
                    update={"running": False, "result": event.result})
        log.info("web artifact %s ended: %s", opened.status.run_id,
                 opened.status.result.outcome if opened.status.result else "?")

    def status(self) -> WebStatus | None:
        return self._open.status if self._open else None

    def stop(self) -> WebStatus | None:
        with self._lock:
            return self._stop()

    def _stop(self) -> WebStatus | None:
        opened, self._open = self._open, None
        self.web.site = None
        if opened is None:
            return None
        if opened.cancel is not None and opened.thread is not None:
            opened.cancel.set()
            opened.thread.join(STOP_WAIT_S)
        return opened.status.model_copy(update={"running": False})
