"""Where one VM's files live: its folder under ``SOMNUS_HOME/vms/<name>/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import Settings

# The guest's RAM file; QEMU maps it shared, which is how eviction finds it.
RAM_FILE_NAME = "guest.ram"


@dataclass
class VMPaths:
    """Where one VM's files live."""

    root: Path

    @property
    def overlay(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.root / "seed.iso"

    @property
    def serial_log(self) -> Path:
        return self.root / "serial.log"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def token(self) -> Path:
        return self.root / "agent-token"

    @property
    def boot_image(self) -> Path:
        """A copy of a template's save, named for this VM, while it starts from it."""
        return self.root / "boot.save"

    @property
    def ram(self) -> Path:
        """The guest's RAM, when it is a file (``Settings.ram_file``): it outlives QEMU."""
        return self.root / RAM_FILE_NAME

    @property
    def device_state(self) -> Path:
        """QEMU's device state of a VM saved in place (its RAM stays in ``ram``)."""
        return self.root / "devices.state"


def vm_paths(settings: Settings, name: str) -> VMPaths:
    return VMPaths(settings.vms_dir / name)
