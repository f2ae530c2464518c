"""Real-VM fixtures: one image and one booted VM shared by the whole session.

A TCG guest takes close to a minute to boot here, so tests share the VM and
run in file order; the last test in test_lifecycle.py deletes it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from core.config import Settings
from guest_agent.protocol import Subsystem
from images.builder import build_image
from images.catalog import ImageManifest
from orchestrator.host import Host
from orchestrator.hypervisor import Hypervisor
from orchestrator.vms import VMService

pytestmark = pytest.mark.vm

VM_NAME = "vmtest"


@pytest.fixture(scope="session")
def vm_env() -> Iterator[dict[str, str]]:
    """Environment for a Somnus home of our own (the image cache stays shared)."""
    home = Path(tempfile.mkdtemp(prefix="somnus-test-", dir="/var/tmp"))
    home.chmod(0o755)  # libvirt's QEMU user must traverse it
    env = {
        "SOMNUS_HOME": str(home),
        "SOMNUS_DOMAIN_PREFIX": f"somnus-t{os.getpid()}-",
        "SOMNUS_PORT_RANGE_START": "44000",
        "SOMNUS_PORT_RANGE_END": "44999",
        # Guest RAM stays a file (the default): what users run is what is tested.
    }
    yield env
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(vm_env: dict[str, str]) -> Iterator[Settings]:
    old = {k: os.environ.get(k) for k in vm_env}
    os.environ.update(vm_env)
    yield Settings()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def image(settings: Settings) -> ImageManifest:
    return build_image(settings, progress=print)


@pytest.fixture(scope="session")
def host(settings: Settings) -> Iterator[Host]:
    """The real composition root (real agents, libvirt, SQLite); it settles in-process, so
    a test sees the previous VM settled as soon as a swap returns. CLI commands the tests
    run settle in their detached worker, as they do for a user."""
    built = Host(settings, settle_inline=True)
    yield built
    built.close()


@pytest.fixture(scope="session")
def service(host: Host) -> VMService:
    return host.vms


@pytest.fixture(scope="session")
def booted_vm(service: VMService, image: ImageManifest) -> Iterator[str]:
    """The shared VM, created once and booted to agent-ready."""
    try:
        _record, timings = service.create(VM_NAME, Subsystem.CHAT, memory_mib=1024,
                                          progress=print)
        print(f"boot timings: {timings}")
        yield VM_NAME
    finally:
        if service.store.find_vm(VM_NAME) is not None:
            service.delete(VM_NAME)


@pytest.fixture(scope="session", autouse=True)
def no_domains_left_behind(settings: Settings) -> Iterator[None]:
    """After the session, no test domain may remain in libvirt."""
    yield
    hv = Hypervisor(settings.libvirt_uri)
    leftovers = hv.domain_names(settings.domain_prefix)
    for name in leftovers:
        hv.undefine(name)
    assert not leftovers, f"tests left libvirt domains behind: {leftovers}"


@pytest.fixture(scope="session", autouse=True)
def host_log(settings: Settings) -> Iterator[None]:
    """The test process logs to the home's log too (the CLI and settle worker already do),
    and the log is printed when the session ends: a VM gone missing leaves its trace."""
    from core.logs import configure_logging

    path = configure_logging(settings, "tests")
    yield
    if path.exists():
        print(f"--- {path} ---\n" + path.read_text()[-20000:])


@dataclass(frozen=True)
class AppServer:
    """A real ``somnus serve`` app (live libvirt events), in a thread of this process."""

    base: str
    token: str


@pytest.fixture(scope="module")
def app_server(settings: Settings, image: ImageManifest) -> Iterator[AppServer]:
    """The web app and API over the session's home, as ``somnus serve`` runs them (the
    security monitor off: its policy would act on the tests' busy TCG guests). Per module:
    while it runs it also serves the research VM's fetch queue, which some research tests
    need unserved."""
    import uvicorn

    from api import create_app
    from api.auth import ensure_token

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings, api_host="127.0.0.1", live=True), host="127.0.0.1", port=port,
        log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield AppServer(f"http://127.0.0.1:{port}", ensure_token(settings))
    server.should_exit = True
    thread.join(timeout=60)


@pytest.fixture(scope="module")
def app_page(app_server: AppServer) -> Iterator[WebDriver]:
    """A headless chromium logged in to the module's app. When the module ends, no request
    may have left loopback and the console must hold no error."""
    from tests.browser import chromium, console_errors, log_in, off_loopback, requested_urls

    with chromium() as driver:
        log_in(driver, app_server.base, app_server.token)
        yield driver
        assert off_loopback(requested_urls(driver)) == []
        assert console_errors(driver) == []
