"""Watch one phase of a run: stream its output, stop it at the first limit it crosses.

The agent checks every ``POLL_S``: the cgroup's OOM kills and refused forks, its CPU
time, the wall clock, and (every ``DISK_POLL_S``) what the run wrote; output counts
as it is read. Crossing a limit kills the whole cgroup at once.
"""

from __future__ import annotations

import codecs
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guest_agent.protocol.runs import (
    Diagnostic,
    LimitName,
    RunEvent,
    RunEventKind,
    RunLimits,
    RunOutcome,
    RunResult,
)
from guest_agent.sandbox.bwrap import PATH, RunFolder
from guest_agent.sandbox.cgroups import RunGroup

POLL_S = 0.1
DISK_POLL_S = 0.5
READ_BYTES = 65536


@dataclass
class Phase:
    """What one phase (compile or run) ended with."""

    returncode: int
    duration_s: float
    limit: LimitName | None
    truncated: bool
    usage_cpu_s: float
    peak_memory_mib: float | None
    oom_killed: bool
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    text: list[str] = field(default_factory=list)  # its output, for diagnostics


def watch(group: RunGroup, argv: list[str], folder: RunFolder, limits: RunLimits,
           stdin: Path | None, cancel: threading.Event | None = None,
           ) -> Generator[RunEvent, None, Phase]:
    """Start ``argv`` in ``group``, stream its output, stop it at the first limit crossed."""
    started = time.monotonic()
    with open(stdin or os.devnull, "rb") as stdin_file:
        proc = subprocess.Popen(group.wrap(argv), stdin=stdin_file, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                cwd=folder.work, env={"PATH": PATH})  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): RunEventKind.STDOUT,
               proc.stderr.fileno(): RunEventKind.STDERR}  # fmt: skip
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in streams}
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    limit: LimitName | None = None
    truncated = False
    output = 0
    counted = {kind: 0 for kind in streams.values()}
    text: list[str] = []
    next_disk_check = started

    def stop(reason: LimitName) -> None:
        nonlocal limit
        if limit is None:
            limit = reason
            group.kill(proc)

    try:
        while selector.get_map() or proc.poll() is None:
            ready = selector.select(POLL_S) if selector.get_map() else _sleep(POLL_S)
            for key, _ in ready:
                fd = int(key.fd)
                chunk = os.read(fd, READ_BYTES)
                if not chunk:
                    selector.unregister(fd)
                    continue
                room = limits.output_bytes - output
                if room <= 0:
                    continue  # killed already; drain what is left in the pipe
                if len(chunk) > room:
                    chunk, truncated = chunk[:room], True
                    stop(LimitName.OUTPUT)
                output += len(chunk)
                counted[streams[fd]] += len(chunk)
                data = decoders[fd].decode(chunk)
                if data:
                    text.append(data)
                    yield RunEvent(kind=streams[fd], data=data)
            now = time.monotonic()
            usage = group.usage()
            if cancel is not None and cancel.is_set() and proc.poll() is None:
                group.kill(proc)  # stopped by its user: no limit to report
            if usage.oom_kills:
                stop(LimitName.MEMORY)
            elif usage.pids_refused:
                stop(LimitName.PIDS)
            elif usage.cpu_s > limits.cpu_s:
                stop(LimitName.CPU_TIME)
            elif now - started > limits.wall_s:
                stop(LimitName.WALL_TIME)
            elif now >= next_disk_check:
                next_disk_check = now + DISK_POLL_S
                if _disk_use(folder)[0] > limits.disk_mib * 1024 * 1024:
                    stop(LimitName.DISK)
    finally:
        selector.close()
        if proc.poll() is None:
            group.kill(proc)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    usage = group.usage()
    code = proc.returncode
    if limit is None and _signal_of(code) == signal.SIGXFSZ:
        limit = LimitName.FILE_SIZE
    elif limit is None and _signal_of(code) == signal.SIGXCPU:
        limit = LimitName.CPU_TIME
    elif limit is None and usage.oom_kills:
        limit = LimitName.MEMORY
    elif limit is None and code != 0 and (
        _disk_use(folder)[1] >= limits.file_size_mib * 1024 * 1024
    ):  # Python (and others) ignore SIGXFSZ: the write fails with EFBIG, the program exits
        limit = LimitName.FILE_SIZE
    return Phase(returncode=code, duration_s=time.monotonic() - started, limit=limit,
                  truncated=truncated, usage_cpu_s=usage.cpu_s,
                  peak_memory_mib=usage.peak_memory_mib, oom_killed=usage.oom_kills > 0,
                  stdout_bytes=counted[RunEventKind.STDOUT],
                  stderr_bytes=counted[RunEventKind.STDERR], text=text)  # fmt: skip


def logged(events: Generator[RunEvent, None, RunResult],
            log: Any) -> Generator[RunEvent, None, RunResult]:
    """Pass ``events`` on, writing each one's output to ``log`` as it comes."""
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            result: RunResult = done.value
            return result
        if event.data:
            log.write(event.data)
            log.flush()
        yield event


def _sleep(seconds: float) -> list[tuple[selectors.SelectorKey, int]]:
    time.sleep(seconds)
    return []


def _signal_of(returncode: int) -> int | None:
    """The signal that ended the process: negative from Popen, or 128+N from bwrap/sh."""
    if returncode < 0:
        return -returncode
    if 128 < returncode <= 128 + 64:
        return returncode - 128
    return None


def phase_result(phase: Phase, compile_s: float | None, compiling: bool = False,
            diagnostics: list[Diagnostic] | None = None) -> RunResult:
    sig = _signal_of(phase.returncode)
    if phase.limit is not None:
        outcome = RunOutcome.LIMIT
    elif compiling:
        outcome = RunOutcome.COMPILE_ERROR
    else:
        outcome = RunOutcome.OK if phase.returncode == 0 else RunOutcome.FAILED
    return RunResult(
        outcome=outcome,
        exit_code=None if sig else phase.returncode,
        signal=signal.Signals(sig).name if sig else None,
        limit=phase.limit,
        duration_s=0.0 if compiling else round(phase.duration_s, 3),
        compile_s=compile_s,
        cpu_s=round(phase.usage_cpu_s, 3),
        peak_memory_mib=round(phase.peak_memory_mib, 1) if phase.peak_memory_mib else None,
        truncated=phase.truncated,
        stdout_bytes=phase.stdout_bytes,
        stderr_bytes=phase.stderr_bytes,
        diagnostics=diagnostics or [],
    )


def _disk_use(folder: RunFolder) -> tuple[int, int]:
    """Bytes on disk of everything the run wrote, and its largest file's size."""
    total = largest = 0
    for root in (folder.work, folder.build):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                total += st.st_blocks * 512
                largest = max(largest, st.st_size)
    return total, largest
