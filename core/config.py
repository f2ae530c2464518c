"""Orchestrator settings (pydantic-settings: environment variables prefixed ``SOMNUS_``)."""

from __future__ import annotations

from enum import Enum, StrEnum
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import InvalidInput


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
    web_guest_port: int = 8701  # where the artifacts VM's agent serves web artifacts
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
    # TCG's translation cache per VM, MiB; 0 is QEMU's default, 1 GiB. bench.tbcache, 1 GiB
    # guest: idle QEMU RSS 1454 MiB at the default, 1071 at 256 (anonymous RAM); in-guest
    # embedding no slower, decode 0.262 tok/s against 0.254 and prompt 0.37 against 0.36.
    tb_cache_mib: int = Field(default=256, ge=0)
    # Guest RAM in a file in the VM's folder (QEMU's memory-backend-file, shared): a VM out
    # of the foreground is saved in place (device state only; Lifecycle.save) and a
    # template is that state plus a sparse copy of the file. False: anonymous RAM and
    # libvirt's managed saves, which copy the whole RAM.
    ram_file: bool = True
    # Start a new VM from a saved first boot of its shape (orchestrator.templates): seconds,
    # not a cold boot. The first VM of each shape boots cold and is captured.
    templates: bool = True
    # Let the artifacts VM run beside the foreground VM when the budget allows.
    artifacts_overlay: bool = True
    # Restart the foreground VM when its QEMU process dies.
    restart_crashed: bool = True
    # Research: a SearXNG-compatible JSON search endpoint (``{url}?q=...&format=json``) the
    # host's fetch proxy asks for web research; unset, it searches its own crawl index.
    research_search_url: str | None = None
    # The fetch proxy's caps per request: the body (stopped when it grows past this) and
    # the whole request, redirects included.
    research_proxy_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024,
                                          le=20 * 1024 * 1024)
    research_proxy_timeout_s: float = Field(default=20.0, gt=0, le=600)

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
    def templates_dir(self) -> Path:
        return self.home / "templates"

    @cached_property
    def images_dir(self) -> Path:
        return self.cache / "images"

    @cached_property
    def wheels_dir(self) -> Path:
        return self.cache / "wheels"


def _expected(model: type[BaseSettings], field: str) -> str:
    """What a field accepts, in words: its type and its bounds (``an integer >= 512``)."""
    info = model.model_fields[field]
    kind = info.annotation
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "one of " + ", ".join(str(m.value) for m in kind)
    words = {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    noun = words.get(kind, "a string") if isinstance(kind, type) else "a valid value"
    bounds = [f"{op} {getattr(m, attr)}" for m in info.metadata
              for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(m, attr, None) is not None]
    return " ".join([noun, " and ".join(bounds)]) if bounds else noun


def _bad_settings(model: type[BaseSettings], exc: ValidationError) -> InvalidInput:
    """One line naming every bad variable, the value given and what it should be."""
    prefix = model.model_config.get("env_prefix", "")
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        if field in model.model_fields:
            problems.append(f"bad setting {prefix}{field.upper()}={error['input']!r}: "
                            f"expected {_expected(model, field)}")
        else:  # not one field's fault (none today): pydantic's own words
            problems.append(f"bad settings: {error['msg']}")
    return InvalidInput("; ".join(problems))


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load(model: type[SettingsT]) -> SettingsT:
    """Any settings class from the environment; a bad value is one ``InvalidInput`` line."""
    try:
        return model()
    except ValidationError as exc:
        raise _bad_settings(model, exc) from None


def load_settings() -> Settings:
    """Settings from the environment; a bad value is one ``InvalidInput`` line, not a traceback."""
    return load(Settings)
