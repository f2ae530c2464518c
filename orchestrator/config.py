"""Orchestrator settings (pydantic-settings: environment variables prefixed ``SOMNUS_``)."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AccelMode(StrEnum):
    """How guests are accelerated; ``auto`` picks KVM only where it really works."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class SwapPolicy(StrEnum):
    """How many VMs stay resident beside the foreground one."""

    SINGLE_ACTIVE = "single-active"  # one VM runs; the others leave RAM (saved)
    BUDGET = "budget"  # as many as fit in the memory budget; LRU demoted first


class Settings(BaseSettings):
    """Where Somnus keeps its state and how it talks to libvirt.

    ``home`` holds per-installation state (database, keys, VM disks); ``cache``
    holds content-addressed artefacts (wheels, images) that any installation on
    the machine may share. Both must be readable by libvirt's QEMU user, so they
    live outside ``/root`` by default.
    """

    model_config = SettingsConfigDict(env_prefix="SOMNUS_", extra="ignore")

    home: Path = Path("/var/lib/somnus")
    cache: Path = Path("/var/cache/somnus")
    libvirt_uri: str = "qemu:///system"
    accel: AccelMode = AccelMode.AUTO
    domain_prefix: str = "somnus-"
    port_range_start: int = Field(default=42000, ge=1024, le=65000)
    port_range_end: int = Field(default=42999, ge=1024, le=65535)
    agent_guest_port: int = 8700
    default_memory_mib: int = Field(default=1024, ge=256)
    default_vcpus: int = Field(default=2, ge=1)
    disk_size_gib: int = Field(default=8, ge=2)
    min_free_disk_mib: int = Field(default=1024, ge=0)
    timeout_domain_s: float = 30.0
    timeout_ssh_s: float = 300.0
    timeout_cloud_init_s: float = 300.0
    timeout_agent_s: float = 180.0
    guest_user: str = "somnus"
    policy: SwapPolicy = SwapPolicy.SINGLE_ACTIVE
    memory_budget_mib: int = Field(default=6144, ge=512)
    # QEMU's own memory beside the guest RAM (TCG's translation cache included).
    qemu_overhead_mib: int = Field(default=256, ge=0)
    # Let the artifacts VM run beside the foreground VM when the budget allows.
    artifacts_overlay: bool = True
    # Restart the foreground VM when its QEMU process dies.
    restart_crashed: bool = True

    @cached_property
    def db_path(self) -> Path:
        return self.home / "somnus.db"

    @cached_property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @cached_property
    def vms_dir(self) -> Path:
        return self.home / "vms"

    @cached_property
    def images_dir(self) -> Path:
        return self.cache / "images"

    @cached_property
    def wheels_dir(self) -> Path:
        return self.cache / "wheels"


def load_settings() -> Settings:
    """Settings from the environment."""
    return Settings()
