"""Fixtures for lifecycle tests on libvirt's test driver (tests/vm overrides them with real VMs)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.config import Settings
from images.catalog import ImageManifest, image_dir
from images.recipe import Flavour
from orchestrator.host import Host
from orchestrator.hypervisor import Hypervisor
from orchestrator.vms import VMService
from tests.fakes import StandInAgents, agents_of, fake_host


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        cache=tmp_path / "cache",
        libvirt_uri="test:///default",
        accel="tcg",
        domain_prefix=f"unit-{uuid.uuid4().hex[:6]}-",
        port_range_start=46000,
        port_range_end=46999,
        min_free_disk_mib=1,
    )


ARTIFACTS_IMAGE = "ef" * 32
RESEARCH_IMAGE = "fa" * 32


@pytest.fixture
def image(settings: Settings) -> ImageManifest:
    """The base image; artifacts and research flavours are there too (for their VMs)."""
    write_image(settings, ARTIFACTS_IMAGE, Flavour.ARTIFACTS)
    write_image(settings, RESEARCH_IMAGE, Flavour.RESEARCH)
    return write_image(settings, "ab" * 32)


def write_image(settings: Settings, recipe: str, flavour: Flavour = Flavour.BASE,
                age_s: float = 0) -> ImageManifest:
    """A tiny but real qcow2 base with a manifest, as the builder would leave it."""
    folder = image_dir(settings, recipe)
    folder.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"), "64M"], check=True
    )
    for name in ("vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"x")
    manifest = ImageManifest(
        name="unit",
        flavour=flavour,
        recipe_hash=recipe,
        base_hash="cd" * 32,
        created_at=datetime.now(UTC) - timedelta(seconds=age_s),
        path=folder,
        disk=folder / "disk.qcow2",
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.img",
        kernel_cmdline="root=/dev/vda",
        disk_bytes=1,
        virtual_size_bytes=64 << 20,
        debian_suite="bookworm",
        packages=[],
        guest_requirements=[],
        build_seconds=0.0,
    )
    manifest.write(folder)
    return manifest


@pytest.fixture
def host(settings: Settings, image: ImageManifest) -> Iterator[Host]:
    """The composition root over the test driver, with the fakes in every seam."""
    built = fake_host(settings, Hypervisor(settings.libvirt_uri))
    yield built
    hv = built.hypervisor()
    for name in hv.domain_names(settings.domain_prefix):
        hv.undefine(name)
    built.close()


@pytest.fixture
def service(host: Host) -> VMService:
    return host.vms


@pytest.fixture
def agents(host: Host) -> StandInAgents:
    """The stand-in agents of ``host`` (one per VM, made on first use)."""
    return agents_of(host)


@pytest.fixture
def fresh_cli_host() -> Iterator[None]:
    """The CLI keeps one host per process (``cli.common.host``); in-process CLI tests get
    their own, built from this test's environment and closed afterwards."""
    from cli import common

    common.host.cache_clear()
    yield
    if common.host.cache_info().currsize:
        common.host().close()
    common.host.cache_clear()
