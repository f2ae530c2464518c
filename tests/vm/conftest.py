"""Real-VM fixtures: one image and one booted VM shared by the whole session.

A TCG guest takes close to a minute to boot here, so tests share the VM and
run in file order; the last test in test_lifecycle.py deletes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
