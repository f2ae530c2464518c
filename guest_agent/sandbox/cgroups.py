"""The agent's delegated cgroup subtree: one child cgroup per sandboxed run.

``somnus-agent.service`` has ``Delegate=memory pids``, so systemd hands the unit's
cgroup to the agent's user. cgroup v2 lets only leaves hold processes, so the
agent first moves itself into ``agent/``; runs go under ``runs/<id>``, each with
``memory.max`` (no swap, the whole group OOM-killed together), ``pids.max``, CPU
time from ``cpu.stat`` and one write to ``cgroup.kill`` to stop every process of it.
A run's first process joins its cgroup itself, before it execs anything
(``RunGroup.wrap``), so nothing it starts can escape into the agent's cgroup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = "+memory +pids"
EMPTY_WAIT_S = 5.0
# Left to the agent and the system when runs take memory: a run that reaches the VM's
# own limit would make the kernel reclaim the agent's pages (seconds without an answer)
# long before the run's own limit fires. All runs together stay under what was free.
AGENT_RESERVE_MIB = 192
RUNS_MIN_MIB = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    """What a run's cgroup counted so far."""

    cpu_s: float = 0.0
    oom_kills: int = 0
    pids_refused: int = 0  # forks refused by pids.max
    peak_memory_mib: float | None = None


class RunGroup(Protocol):
    """The processes of one sandbox phase, limited and killed together."""

    def wrap(self, argv: list[str]) -> list[str]: ...
    def usage(self) -> Usage: ...
    def kill(self, proc: subprocess.Popen[bytes]) -> None: ...
    def close(self) -> None: ...


class Jail(Protocol):
    def group(self, name: str, memory_mib: int, pids: int) -> RunGroup: ...


def available_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's estimate of memory available without swapping, in MiB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise OSError(f"no MemAvailable in {meminfo}")


def _read_keyed(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in lines if line.strip())}


def remove_cgroup(path: Path) -> None:
    """Kill what is left in a run's cgroup and remove it (it must be empty first)."""
    deadline = time.monotonic() + EMPTY_WAIT_S
    while True:
        try:
            (path / "cgroup.kill").write_text("1")
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY until the last process is reaped
            if time.monotonic() > deadline:
                log.warning("cgroup %s not empty after %.0fs: left", path, EMPTY_WAIT_S)
                return
            time.sleep(0.05)


class CgroupRun:
    """``runs/<name>``: a cgroup v2 leaf with memory and pids limits."""

    def __init__(self, path: Path, memory_mib: int, pids: int) -> None:
        self.path = path
        path.mkdir()
        (path / "memory.max").write_text(str(memory_mib * 1024 * 1024))
        swap = path / "memory.swap.max"
        if swap.exists():  # only with swap accounting; the VMs have no swap anyway
            swap.write_text("0")
        (path / "memory.oom.group").write_text("1")
        (path / "pids.max").write_text(str(pids))

    def wrap(self, argv: list[str]) -> list[str]:
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def usage(self) -> Usage:
        memory = _read_keyed(self.path / "memory.events")
        pids = _read_keyed(self.path / "pids.events")
        cpu = _read_keyed(self.path / "cpu.stat")
        try:
            peak: float | None = int((self.path / "memory.peak").read_text()) / 2**20
        except (OSError, ValueError):
            peak = None
        return Usage(cpu_s=cpu.get("usage_usec", 0) / 1e6, oom_kills=memory.get("oom_kill", 0),
                     pids_refused=pids.get("max", 0), peak_memory_mib=peak)  # fmt: skip

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        (self.path / "cgroup.kill").write_text("1")

    def close(self) -> None:
        remove_cgroup(self.path)


class CgroupJail:
    """The delegated subtree; ``setup`` moves the agent into its leaf."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"

    @classmethod
    def delegated(cls) -> CgroupJail | None:
        """The agent's own cgroup, if systemd delegated it (else None: no sandbox here)."""
        try:
            line = Path("/proc/self/cgroup").read_text().strip().splitlines()[0]
        except (OSError, IndexError):
            return None
        if not line.startswith("0::"):
            return None  # cgroup v1 or hybrid
        root = CGROUP_ROOT / line[3:].lstrip("/")
        if not os.access(root / "cgroup.procs", os.W_OK):
            return None
        return cls(root)

    def setup(self) -> None:
        leaf = self.root / "agent"
        leaf.mkdir(exist_ok=True)
        # Every process of the unit: the agent, and any child left by an earlier start.
        for pid in (self.root / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                (leaf / "cgroup.procs").write_text(pid)
        (self.root / "cgroup.subtree_control").write_text(CONTROLLERS)
        self.runs.mkdir(exist_ok=True)
        (self.runs / "cgroup.subtree_control").write_text(CONTROLLERS)
        cap = max(RUNS_MIN_MIB, available_mib() - AGENT_RESERVE_MIB)
        (self.runs / "memory.max").write_text(str(cap * 1024 * 1024))
        log.info("sandbox: runs may use %d MiB together", cap)
        for stale in self.runs.iterdir():  # runs of an agent that was killed
            if stale.is_dir():
                remove_cgroup(stale)

    def group(self, name: str, memory_mib: int, pids: int) -> CgroupRun:
        return CgroupRun(self.runs / name, memory_mib, pids)


class ProcessGroupRun:
    """No cgroup (a test on the host): the run's session is killed as one process group;
    memory and pids are not limited, CPU time is not counted."""

    def wrap(self, argv: list[str]) -> list[str]:
        return argv

    def usage(self) -> Usage:
        return Usage()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        pass


class ProcessGroupJail:
    def group(self, name: str, memory_mib: int, pids: int) -> ProcessGroupRun:
        return ProcessGroupRun()
