"""Stale projects: compacting an archived VM's disk, and planning garbage collection."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from core.errors import HypervisorUnavailable
from orchestrator.devsessions.models import as_utc
from orchestrator.projects.tables import ProjectRow

# A temp folder younger than this may belong to a command still running.
TEMP_GRACE = timedelta(hours=1)
TEMP_PREFIX = "somnus-project-"


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def _qemu_img(*args: str) -> str:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HypervisorUnavailable(f"qemu-img {args[0]} failed: {result.stderr.strip()[:200]}")
    return result.stdout


def compact_overlay(overlay: Path) -> tuple[int, int]:
    """Rewrite a stopped VM's qcow2 overlay without its dead clusters; (bytes before, after).

    The overlay keeps its backing file (``-B``), so the shared base is untouched
    and the result is again a thin overlay. Internal snapshots are not copied:
    callers skip compaction for a VM that has any.
    """
    info = json.loads(_qemu_img("info", "--output=json", "-U", str(overlay)))
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    compacted = overlay.with_name(overlay.name + ".compact")
    args = ["convert", "-q", "-O", "qcow2"]
    if backing:
        args += ["-B", backing, "-F", info.get("backing-filename-format", "qcow2")]
    before = allocated_bytes(overlay)
    try:
        _qemu_img(*args, str(overlay), str(compacted))
        compacted.chmod(0o600)
        os.replace(compacted, overlay)  # atomic: a crash leaves the old overlay or the new one
    finally:
        compacted.unlink(missing_ok=True)
    return before, allocated_bytes(overlay)


@dataclass
class GcPlan:
    """What ``somnus project gc`` removes."""

    orphan_records: list[str] = field(default_factory=list)  # projects whose VM is gone
    stale_temp: list[Path] = field(default_factory=list)  # bundles/clones of dead commands
    expired: list[str] = field(default_factory=list)  # archived and unused for too long

    @property
    def empty(self) -> bool:
        return not (self.orphan_records or self.stale_temp or self.expired)


def plan_gc(projects: Iterable[ProjectRow], vm_names: set[str], temp_dir: Path,
            now: datetime, older_than: timedelta | None) -> GcPlan:
    """Decide what is garbage; touches nothing."""
    plan = GcPlan()
    for row in projects:
        if row.vm_name not in vm_names:
            plan.orphan_records.append(row.name)
        elif (older_than is not None and row.archived
              and now - as_utc(row.last_used) > older_than):
            plan.expired.append(row.name)
    if temp_dir.is_dir():
        for entry in sorted(temp_dir.iterdir()):
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                mtime = entry.lstat().st_mtime
            except FileNotFoundError:
                continue  # a running command's folder, removed as it finished
            if now.timestamp() - mtime > TEMP_GRACE.total_seconds():
                plan.stale_temp.append(entry)
    return plan
