"""The guest's own security view: the failure throttle, the event ledger, sshd's words,
the report (real psutil readings of this machine) and the sandbox-escape check (a real
process whose parent is named ``bwrap``, in a cgroup listing it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from guest_agent.protocol.runs import LimitName, RunEvent, RunEventKind, RunOutcome, RunResult
from guest_agent.protocol.security import GuestEventKind
from guest_agent.security import (
    SSH_FAILURE,
    FailureThrottle,
    SecurityLedger,
    escaped_processes,
    own_cgroup,
)


def test_failures_within_the_allowance_are_not_slowed_then_each_waits_longer() -> None:
    throttle = FailureThrottle(allowed=3, window_s=60, step_s=0.5, max_delay_s=1.2)
    assert [throttle.delay_s(now=t) for t in (0, 1, 2)] == [0, 0, 0]
    assert [throttle.delay_s(now=t) for t in (3, 4, 5)] == [0.5, 1.0, 1.2]
    assert throttle.delay_s(now=200) == 0  # the minute has passed


def test_the_ledger_numbers_events_and_counts_runs_stopped_by_a_limit() -> None:
    ledger = SecurityLedger()
    ledger.record(GuestEventKind.AUTH_FAILURE, "wrong token: /health")
    limited = RunResult(outcome=RunOutcome.LIMIT, limit=LimitName.MEMORY, duration_s=1.0)
    fine = RunResult(outcome=RunOutcome.OK, duration_s=1.0)
    events = [RunEvent(kind=RunEventKind.STARTED),
              RunEvent(kind=RunEventKind.RESULT, result=limited),
              RunEvent(kind=RunEventKind.RESULT, result=fine)]
    assert list(ledger.watch_runs(events)) == events  # passed through unchanged
    assert [e.seq for e in ledger.events_after(0)] == [1, 2]
    assert [e.kind for e in ledger.events_after(1)] == [GuestEventKind.SANDBOX_LIMIT]
    report = ledger.report("vm", since=1)
    assert (report.failed_agent_auths, report.sandbox_limit_hits) == (1, 1)
    assert [e.seq for e in report.events] == [2]


def test_the_report_reads_this_machine() -> None:
    report = SecurityLedger().report("vm", since=0)
    assert report.process_count > 1 and report.top_processes
    assert 0 < report.disk_used_percent < 100
    assert report.blocked_outbound is None  # slirp drops it where the guest cannot see


def test_sshd_failure_lines_are_recognised_and_successes_are_not() -> None:
    failures = [
        "Failed password for somnus from 10.0.2.2 port 40000 ssh2",
        "Failed publickey for somnus from 10.0.2.2 port 40000 ssh2: ED25519 SHA256:x",
        "Invalid user admin from 10.0.2.2 port 40001",
        "Connection closed by authenticating user somnus 10.0.2.2 port 40002 [preauth]",
        "Disconnecting invalid user root 10.0.2.2 port 40003: Too many authentication failures",
    ]
    fine = [
        "Accepted publickey for somnus from 10.0.2.2 port 40004 ssh2: ED25519 SHA256:x",
        "Server listening on 0.0.0.0 port 22.",
        "Received disconnect from 10.0.2.2 port 40004:11: disconnected by user",
    ]
    assert all(SSH_FAILURE.match(line) for line in failures)
    assert not any(SSH_FAILURE.match(line) for line in fine)


def test_a_sandboxed_process_in_the_agents_cgroup_is_an_escape(tmp_path: Path) -> None:
    bwrap = tmp_path / "bwrap"  # a shell under bwrap's name: its child is "sandboxed"
    shutil.copy("/bin/sh", bwrap)
    parent = subprocess.Popen([str(bwrap), "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        child = None
        while child is None and time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True,
                                   text=True).stdout.split()
            child = int(found[0]) if found else None
        assert child is not None
        cgroup = tmp_path / "agent"
        cgroup.mkdir()
        (cgroup / "cgroup.procs").write_text(f"{parent.pid}\n{child}\n")
        assert escaped_processes(cgroup) == [child]  # bwrap itself is not sandboxed
        ledger = SecurityLedger()
        assert ledger.report("vm", 0, cgroup).sandbox_escape_attempts == 1
        assert ledger.report("vm", 0, cgroup).sandbox_escape_attempts == 1  # reported once
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()


def test_own_cgroup_reads_proc_self_cgroup(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/somnus-agent.service/agent\n")
    assert own_cgroup(proc, Path("/sys/fs/cgroup")) == Path(
        "/sys/fs/cgroup/system.slice/somnus-agent.service/agent")
    assert own_cgroup(tmp_path / "missing") is None
    assert escaped_processes(tmp_path / "nowhere") == []
