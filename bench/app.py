"""The web app's speed in a real browser: time to the first painted page and to a usable
chat box, and the delay the page adds between a token leaving the agent and appearing
on screen.

Everything but QEMU is real: the app is served as ``somnus serve`` serves it (uvicorn,
live view) over a Somnus home whose chat VM is a domain of libvirt's test driver, and
that VM's agent is the real guest agent with the real SmolLM2 (llama.cpp), running on
the host at the VM's agent port. The browser is Debian's headless chromium (Selenium).

Each token's departure is stamped where the agent writes it to the socket (an ASGI
wrapper around the agent app); its arrival is stamped by the page in the animation
frame after it was appended (``window.__somnusTokenTimes``). Both clocks are the
host's wall clock. Targets: first paint and chat box ≤ 1 s; p95 delay ≤ 50 ms.
Prints one JSON line. Usage: python -m bench.app [--loads 5] [--tokens 96]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bench.api import free_port

CHAT_VM = "chat"


class DepartureStamps:
    """ASGI wrapper: the wall-clock time each chunk of a streamed answer was sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sent: list[tuple[float, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and message.get("body"):
                self.sent.append((time.time(), message["body"]))
        await self.app(scope, receive, stamped)

    def content_departures(self, since: int) -> list[float]:
        """When each chunk carrying answer text left, in order."""
        times = []
        for at, body in self.sent[since:]:
            for line in body.decode(errors="replace").splitlines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        times.append(at)
        return times


def serve_in_thread(app: ASGIApp, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def build(home: Path) -> tuple[Any, DepartureStamps, str]:
    """The home, its chat VM (a test-driver domain) and the real agent at its port."""
    from core.config import Settings, load_settings
    from guest_agent.app import create_app as create_agent
    from guest_agent.protocol import AgentConfig, AIModelConfiguration, Subsystem
    from guest_agent.runtime import ModelRuntime
    from images.embedder import ensure_embedder
    from orchestrator import credentials
    from orchestrator.host import Host
    from orchestrator.hypervisor import Hypervisor
    from orchestrator.live import start_event_loop
    from orchestrator.models import VMRecord, VMState

    start_event_loop()
    settings = Settings(home=home, cache=home / "cache", libvirt_uri="test:///default",
                        domain_prefix="bench-app-", port_range_start=47000,
                        port_range_end=47999)
    host = Host(settings, hypervisor=Hypervisor(settings.libvirt_uri))
    svc = host.vms
    domain = svc.domain_name(CHAT_VM)
    svc.hv.define(f"<domain type='test'><name>{domain}</name><memory unit='MiB'>1024"
                  "</memory><os><type>hvm</type></os></domain>")
    svc.hv.start(domain)
    paths = svc.paths(CHAT_VM)
    paths.root.mkdir(parents=True)
    token = credentials.new_token()
    credentials.write_private(paths.token, token.encode())
    agent_port = free_port()
    svc.store.add_vm(VMRecord(
        name=CHAT_VM, domain_name=domain, subsystem=Subsystem.CHAT, state=VMState.RUNNING,
        memory_mib=1024, vcpus=2, accel="tcg", image_hash="bench", vm_dir=str(paths.root),
        ssh_port=free_port(), agent_port=agent_port))
    # One thread for the model: the other core is the browser's and the server's.
    model = AIModelConfiguration(context_length=1024, n_threads=1,
                                 embedding_model_path=str(ensure_embedder(load_settings())))
    runtime = ModelRuntime(model, home / "runtime")
    runtime.load()
    agent = DepartureStamps(create_agent(AgentConfig(
        vm_name=CHAT_VM, subsystem=Subsystem.CHAT, token=token,
        data_dir=str(home / "agent"), model=model), runtime))
    serve_in_thread(agent, agent_port)
    return host, agent, token


def page_loads(driver: Any, base: str, loads: int) -> dict[str, Any]:
    """First contentful paint and the chat box's readiness, ms after navigation start."""
    from tests.browser import visible, wait_for

    paints, ready = [], []
    for _ in range(loads):
        driver.get("about:blank")  # a new document each time, not a fragment navigation
        driver.get(base + "/#/chat")
        visible(driver, "#chat-input")
        wait_for(driver, lambda d: d.execute_script("return window.__somnusChatReady"), 10,
                 "the chat box to be ready")
        fcp = driver.execute_script(
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "return p ? p.startTime : null")
        paints.append(fcp)
        ready.append(driver.execute_script("return window.__somnusChatReady"))
    return {"first_paint_ms": _summary([p for p in paints if p is not None]),
            "chat_ready_ms": _summary(ready)}


def token_delays(driver: Any, agent: DepartureStamps, tokens: int) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    from tests.browser import wait_for

    driver.execute_script("window.__somnusTokenTimes = []")
    since = len(agent.sent)
    box = driver.find_element(By.ID, "chat-input")
    max_tokens = driver.find_elements(By.ID, "chat-max-tokens")
    if max_tokens:
        max_tokens[0].clear()
        max_tokens[0].send_keys(str(tokens))
    box.send_keys("Write a short story about a lighthouse keeper.")
    driver.find_element(By.ID, "chat-send").click()
    wait_for(driver, lambda d: d.execute_script(
        "return document.querySelector('.answer[aria-busy=\"true\"]') === null && "
        "(window.__somnusTokenTimes || []).length > 0"), 300, "the answer to finish")
    seen = driver.execute_script(
        "return (window.__somnusTokenTimes || []).map(x => performance.timeOrigin + x.t)")
    left = agent.content_departures(since)
    count = min(len(seen), len(left))
    delays = [seen[i] - left[i] * 1000 for i in range(count)]
    return {"tokens": count, "tokens_on_page": len(seen), "tokens_sent": len(left),
            "delay_ms": _summary(delays)}


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1),
            "max": round(ordered[-1], 1), "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=int, default=5, help="page loads to time")
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens of the answer")
    args = parser.parse_args()
    from api import create_app
    from tests.browser import chromium, log_in

    with tempfile.TemporaryDirectory(prefix="somnus-bench-app-") as tmp:
        host, agent, _ = build(Path(tmp))
        from api.auth import ensure_token

        port = free_port()
        server = serve_in_thread(create_app(host=host, api_host="127.0.0.1", live=True), port)
        base = f"http://127.0.0.1:{port}"
        try:
            with chromium() as driver:
                log_in(driver, base, ensure_token(host.settings))
                loads = page_loads(driver, base, args.loads)
                tokens = token_delays(driver, agent, args.tokens)
        finally:
            server.should_exit = True
    print(json.dumps({"bench": "app", "browser": "chromium headless (Selenium)",
                      "server": "uvicorn, live view; agent: SmolLM2 on the host, 1 thread",
                      **loads, **tokens,
                      "targets": {"first_paint_ms": 1000, "chat_ready_ms": 1000,
                                  "delay_p95_ms": 50}}))


if __name__ == "__main__":
    main()
