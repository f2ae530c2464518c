"""What the guest sees of its own security, for ``GET /security``.

The ledger counts what happens to the agent (failed authentications, flagged prompt
content, sandbox limits and escapes, redacted secrets) and keeps the latest events,
numbered, so the host reads each once. ``report`` adds what the guest can see and
libvirt cannot: processes, TCP listeners, network bytes (the NIC given on QEMU's
command line is invisible to libvirt), disk use and failed SSH logins.

Failed SSH logins come from sshd's journal: one ``journalctl --follow`` for the
agent's life (its unit has the ``systemd-journal`` group), not a process per sample.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import psutil

from guest_agent.protocol.runs import RunEvent, RunEventKind, RunOutcome
from guest_agent.protocol.security import (
    GuestEventKind,
    GuestMetrics,
    GuestSecurityEvent,
    ListeningPort,
    ProcessUsage,
)

log = logging.getLogger(__name__)
KEEP_EVENTS = 500
TOP_PROCESSES = 5
# sshd's words for a login that failed (key, password, unknown user, given up).
SSH_FAILURE = re.compile(
    r"^(Failed \S+ for|Invalid user|Connection (closed|reset) by (authenticating|invalid) user"
    r"|Disconnecting (authenticating|invalid) user|error: maximum authentication attempts)")
# Since boot, from every journal folder: a VM started from a template has a new
# machine-id, but journald goes on writing under the template's (--boot cannot --merge).
SSH_JOURNAL = ["journalctl", "--merge", "--follow", "--output=cat", "--identifier=sshd",
               "--lines=all", "--quiet"]
_COUNTED = {GuestEventKind.AUTH_FAILURE, GuestEventKind.PROMPT_INJECTION,
            GuestEventKind.SANDBOX_LIMIT, GuestEventKind.SANDBOX_ESCAPE}


class FailureThrottle:
    """Slows failed authentications down past a free allowance: the first
    ``allowed`` failures in a minute are answered at once, each later one waits longer
    (up to ``max_delay_s``), so guessing a token gets slower the harder it is tried."""

    def __init__(self, allowed: int = 10, window_s: float = 60.0, step_s: float = 0.1,
                 max_delay_s: float = 2.0) -> None:
        self.allowed, self.window_s = allowed, window_s
        self.step_s, self.max_delay_s = step_s, max_delay_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def delay_s(self, now: float | None = None) -> float:
        """Count one failure; how long to wait before answering it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            while self._times and self._times[0] <= now - self.window_s:
                self._times.popleft()
            excess = len(self._times) - self.allowed
        return min(self.max_delay_s, self.step_s * excess) if excess > 0 else 0.0


class SecurityLedger:
    """Counters and numbered events; thread-safe (requests and runs record concurrently)."""

    def __init__(self) -> None:
        self.started = time.time()
        self._lock = threading.Lock()
        self._seq = 0
        self._events: deque[GuestSecurityEvent] = deque(maxlen=KEEP_EVENTS)
        self.counts: dict[GuestEventKind, int] = dict.fromkeys(GuestEventKind, 0)
        self.ssh_failures = 0
        self._escaped: set[int] = set()  # reported once each

    def record(self, kind: GuestEventKind, detail: str = "") -> None:
        with self._lock:
            self._seq += 1
            self.counts[kind] += 1
            self._events.append(GuestSecurityEvent(seq=self._seq, at=time.time(), kind=kind,
                                                   detail=detail[:500]))

    def events_after(self, since: int) -> list[GuestSecurityEvent]:
        with self._lock:
            return [e for e in self._events if e.seq > since]

    def watch_runs(self, events: Iterable[RunEvent]) -> Iterable[RunEvent]:
        """Pass a run's events through, counting a run stopped by one of its limits."""
        for event in events:
            result = event.result
            if (event.kind is RunEventKind.RESULT and result is not None
                    and result.outcome is RunOutcome.LIMIT):
                self.record(GuestEventKind.SANDBOX_LIMIT, f"a run hit its {result.limit} limit")
            yield event

    # -- sshd's journal --------------------------------------------------------------------

    def follow_ssh(self) -> threading.Thread | None:
        """Count sshd's failed logins since boot, as they are logged (None: no journal)."""
        if shutil.which("journalctl") is None:
            return None
        thread = threading.Thread(target=self._follow, name="ssh-journal", daemon=True)
        thread.start()
        return thread

    def _follow(self) -> None:
        try:
            proc = subprocess.Popen([*SSH_JOURNAL, f"--since=@{int(psutil.boot_time())}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            log.warning("cannot follow sshd's journal: %s", exc)
            return
        assert proc.stdout is not None
        for line in proc.stdout:
            if SSH_FAILURE.match(line):
                with self._lock:
                    self.ssh_failures += 1

    # -- the report ------------------------------------------------------------------------

    def report(self, vm_name: str, since: int, agent_cgroup: Path | None = None) -> GuestMetrics:
        """The guest's metrics now, and the events numbered after ``since``."""
        for pid in set(escaped_processes(agent_cgroup) if agent_cgroup else []) - self._escaped:
            self._escaped.add(pid)
            self.record(GuestEventKind.SANDBOX_ESCAPE,
                        f"sandboxed process {pid} is in the agent's own cgroup")
        net = psutil.net_io_counters(pernic=True)
        rx = sum(c.bytes_recv for nic, c in net.items() if nic != "lo")
        tx = sum(c.bytes_sent for nic, c in net.items() if nic != "lo")
        processes = list(psutil.process_iter(["pid", "name", "username", "cpu_percent",
                                              "memory_info"]))
        with self._lock:
            counts = dict(self.counts)
            ssh_failures = self.ssh_failures
        return GuestMetrics(
            vm_name=vm_name, at=time.time(), agent_started=self.started,
            process_count=len(processes), top_processes=_top(processes),
            listening=listening_ports(), net_rx_bytes=rx, net_tx_bytes=tx,
            disk_used_percent=psutil.disk_usage("/").percent,
            failed_ssh_logins=ssh_failures,
            failed_agent_auths=counts[GuestEventKind.AUTH_FAILURE],
            prompt_injections=counts[GuestEventKind.PROMPT_INJECTION],
            sandbox_limit_hits=counts[GuestEventKind.SANDBOX_LIMIT],
            sandbox_escape_attempts=counts[GuestEventKind.SANDBOX_ESCAPE],
            events=self.events_after(since))


def _top(processes: list[psutil.Process]) -> list[ProcessUsage]:
    """The biggest consumers, by CPU then resident memory (psutil's cached readings:
    CPU percent is since the previous report)."""
    rows = []
    for p in processes:
        info = p.info
        memory = info.get("memory_info")
        rows.append(ProcessUsage(pid=info["pid"], name=info.get("name") or "?",
                                 user=info.get("username") or "?",
                                 cpu_percent=info.get("cpu_percent") or 0.0,
                                 rss_mib=round(memory.rss / 2**20, 1) if memory else 0.0))
    rows.sort(key=lambda r: (r.cpu_percent, r.rss_mib), reverse=True)
    return rows[:TOP_PROCESSES]


def listening_ports() -> list[ListeningPort]:
    """Every listening TCP socket (address and port; the process when the agent may see it)."""
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr:
            continue
        name = ""
        if conn.pid:
            with contextlib.suppress(psutil.Error):
                name = psutil.Process(conn.pid).name()
        found.append(ListeningPort(port=conn.laddr.port, address=conn.laddr.ip, process=name))
    return sorted(found, key=lambda p: (p.port, p.address))


def own_cgroup(proc_cgroup: Path = Path("/proc/self/cgroup"),
               root: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """The cgroup (v2) this process is in: the agent's leaf once its sandbox is set up."""
    try:
        line = proc_cgroup.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    return root / line.split("::", 1)[-1].lstrip("/")


def escaped_processes(agent_cgroup: Path) -> list[int]:
    """Sandboxed processes (descendants of a ``bwrap``) found in the agent's own cgroup.

    A run joins its own cgroup before ``bwrap`` starts (``RunGroup.wrap``), so every
    descendant of a ``bwrap`` belongs under ``runs/``: one in ``agent/`` got out.
    """
    try:
        pids = [int(p) for p in (agent_cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
    escaped = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if any(parent.name() == "bwrap" for parent in psutil.Process(pid).parents()):
                escaped.append(pid)
    return escaped
