"""qcow2 overlays on the shared base image (qemu-img), and disk-space checks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from core.errors import HypervisorUnavailable, InsufficientResources


def require_free_space(path: Path, needed_mib: int) -> None:
    """Refuse to go on when the filesystem holding ``path`` has less than ``needed_mib``."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free_mib = shutil.disk_usage(probe).free // (1024 * 1024)
    if free_mib < needed_mib:
        raise InsufficientResources(
            f"not enough disk space in {probe}: {free_mib} MiB free, {needed_mib} MiB needed"
        )


def create_overlay(base: Path, overlay: Path, size_gib: int) -> None:
    """A thin qcow2 overlay backed by ``base``; the base is never written."""
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
         str(overlay), f"{size_gib}G"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise HypervisorUnavailable(f"qemu-img create failed: {result.stderr.strip()[:200]}")
    overlay.chmod(0o600)


def backing_file(overlay: Path) -> Path | None:
    """The image ``overlay`` is an overlay on (None: none, or no such file)."""
    result = subprocess.run(["qemu-img", "info", "--force-share", "--output=json", str(overlay)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    backing = json.loads(result.stdout).get("backing-filename")
    return Path(backing) if backing else None
