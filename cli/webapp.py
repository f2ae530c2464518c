"""``somnus app``: the web app's front door — start the server if none answers, then
print (or open) a one-time login URL."""

from __future__ import annotations

import subprocess
import sys
import time
import webbrowser
from typing import Annotated

import httpx
import typer

from cli.common import JsonFlag, emit_json, err, out, settings
from core.errors import SomnusError

START_WAIT_S = 90.0  # a cold start recovers the home and subscribes to libvirt first


def _health(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _start_server(host: str, port: int) -> int:
    """``somnus serve`` in the background (its own session: it outlives this command),
    logging to the home's ``logs/serve.log``; returns its pid once it answers."""
    logs = settings().home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / "serve.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--host", host, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SomnusError(f"'somnus serve' exited ({process.returncode}): see {logs}/serve.log")
        if _health(base):
            return process.pid
        time.sleep(0.3)
    raise SomnusError(f"'somnus serve' did not answer within {START_WAIT_S:.0f} s: "
                      f"see {logs}/serve.log")


def open_app(
    host: Annotated[str, typer.Option(help="Where the server listens (loopback).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="The server's port.")] = 8780,
    browser: Annotated[bool, typer.Option("--open", help="Open the URL in a browser.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Start the web app's server if none answers, and print a one-time login URL."""
    from api.auth import ensure_token

    base = f"http://{host}:{port}"
    started = None
    if not _health(base):
        if not as_json:
            err.print(f"starting 'somnus serve' on {base} …")
        started = _start_server(host, port)
    token = ensure_token(settings())
    try:
        answer = httpx.post(f"{base}/app/links", headers={"Authorization": f"Bearer {token}"},
                            timeout=10.0)
    except httpx.HTTPError as exc:
        raise SomnusError(f"the server on {base} does not answer: {exc}") from None
    if answer.status_code != 201:
        raise SomnusError(f"the server on {base} refused a login link ({answer.status_code}): "
                          "is it another home's server? stop it or use --port")
    link = answer.json()
    if as_json:
        emit_json({**link, "server": base, "started_pid": started})
    else:
        out.print(f"Somnus app: {link['url']}", highlight=False, soft_wrap=True)
        out.print("(a one-time login link, valid for 5 minutes; "
                  "'somnus api token' logs in too)", style="dim")
    if browser:
        webbrowser.open(link["url"])
