"""A throwaway Somnus home for benchmarks that boot VMs (the image cache is shared)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import Settings
from images.builder import build_image
from orchestrator.host import Host


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the one JSON line."""
    print(message, file=sys.stderr)


@contextmanager
def scratch_host() -> Iterator[Host]:
    """A host on a home of its own (settling inline, as measured); its VMs and files are
    removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="somnus-bench-", dir="/var/tmp"))
    home.chmod(0o755)  # libvirt's QEMU user must traverse it
    os.environ.update(SOMNUS_HOME=str(home), SOMNUS_DOMAIN_PREFIX=f"somnus-b{os.getpid()}-",
                      SOMNUS_PORT_RANGE_START="45000", SOMNUS_PORT_RANGE_END="45999")
    settings = Settings()
    build_image(settings, progress=log)
    host = Host(settings, settle_inline=True)
    try:
        yield host
    finally:
        for record in host.store.list_vms():
            host.vms.delete(record.name)
        host.close()
        shutil.rmtree(home, ignore_errors=True)
