"""Run a program in a disposable sandbox and stream what it does.

Each run gets a folder on the agent's disk (``runs/<id>/work``: the program's files,
its working folder; ``build``: compiler output) and, per phase (compile, run), a
fresh sandbox: bubblewrap (every namespace new: no network but loopback, its own
PIDs, no capabilities, an allow-listed read-only filesystem, UID 1000) inside a
cgroup of the agent's delegated subtree (``guest_agent.sandbox.cgroups``), under
``prlimit`` (CPU seconds, open files, file size). Why bubblewrap and not podman:
the VM is already the hard boundary, and under TCG every podman start (conmon,
crun, storage) costs seconds, while bubblewrap starts a sandbox in ~0.5 s and needs
no root filesystem to build. The agent watches each phase every ``POLL_S`` and
kills the whole cgroup when a limit is crossed, so the next run starts clean.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guest_agent.protocol.runs import (
    COMPILE_MEMORY_MIB,
    COMPILED,
    MAX_SOURCE_BYTES,
    WEB_APP_PORT,
    Diagnostic,
    LimitName,
    ProducedFile,
    RunEvent,
    RunEventKind,
    RunLimits,
    RunOutcome,
    RunPhase,
    RunRequest,
    RunResult,
    source_files,
)
from guest_agent.sandbox.cgroups import CgroupJail, Jail, RunGroup
from guest_agent.sandbox.toolchains import BUILD, TOOLCHAINS, WORK, Toolchain

POLL_S = 0.1
DISK_POLL_S = 0.5
READ_BYTES = 65536
KEEP_RUNS = 20  # run folders kept for downloads; older ones are removed
MAX_CONCURRENT_RUNS = 2
MAX_REPORTED_FILES = 200
SANDBOX_UID = 1000
PATH = "/usr/local/bin:/usr/bin:/bin"
# Files a sandbox sees in /etc (everything else of the VM's /etc is absent).
ETC_FILES = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
              f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/bin/sh\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
    "hosts": "127.0.0.1 localhost sandbox\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}  # fmt: skip
HOST_ETC = ("alternatives", "ld.so.cache", "localtime")  # bound read-only over the above
RELAY = Path(__file__).with_name("relay.py")
SANDBOX_RELAY = "/opt/relay.py"
WEB_SOCKET = f"{BUILD}/web.sock"  # the relay's socket, as the sandbox sees it


class SandboxError(Exception):
    """A run that cannot start (no sandbox in this VM, a bad request)."""


class SandboxUnavailable(SandboxError):
    """This VM cannot run anything sandboxed."""


class SandboxBusy(SandboxError):
    """``MAX_CONCURRENT_RUNS`` are running already."""


@dataclass
class RunFolder:
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def stdin(self) -> Path:
        return self.root / "stdin"

    @property
    def log(self) -> Path:
        return self.root / "output.log"

    @property
    def web_socket(self) -> Path:
        return self.build / WEB_SOCKET.removeprefix(f"{BUILD}/")


Launcher = Callable[[RunFolder, list[str], dict[str, str], RunLimits], list[str]]


def bwrap_launcher(etc: Path) -> Launcher:
    """The real launcher: ``prlimit`` then ``bwrap`` with ``etc`` as the sandbox's /etc."""

    def launch(folder: RunFolder, argv: list[str], env: dict[str, str],
               limits: RunLimits) -> list[str]:
        cmd = [
            "prlimit", f"--cpu={int(limits.cpu_s) + 1}", f"--nofile={limits.open_files}",
            f"--fsize={limits.file_size_mib * 1024 * 1024}", "--core=0", "--",
            # The agent's one capability (CAP_SYS_TIME, ambient) must not reach bwrap,
            # which refuses to run with capabilities it did not get from setuid.
            "setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--",
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--ro-bind", str(etc), "/etc",
        ]  # fmt: skip
        for name in HOST_ETC:
            cmd += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        cmd += [
            "--ro-bind", str(RELAY), SANDBOX_RELAY,
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--bind", str(folder.work), WORK, "--bind", str(folder.build), BUILD,
            "--chdir", WORK, "--clearenv",
        ]  # fmt: skip
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return [*cmd, "--", *argv]

    return launch


def write_sandbox_etc(etc: Path) -> None:
    """The sandbox's /etc: a few synthetic files, and mount points for ``HOST_ETC``."""
    etc.mkdir(parents=True, exist_ok=True)
    for name, text in ETC_FILES.items():
        (etc / name).write_text(text)
    (etc / "alternatives").mkdir(exist_ok=True)
    for name in ("ld.so.cache", "localtime"):
        (etc / name).touch()


@dataclass
class _Phase:
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


class Sandbox:
    """Runs ``RunRequest``s in ``data_dir/runs``; ``run`` yields the run's events."""

    def __init__(self, data_dir: Path, jail: Jail, launcher: Launcher) -> None:
        self.runs_dir = data_dir / "runs"
        self.jail = jail
        self.launcher = launcher
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_RUNS)

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)

    def produced_file(self, run_id: str, path: str) -> Path:
        """A file in a run's working folder (refusing anything outside it)."""
        work = self.folder(run_id).work.resolve()
        target = (work / path).resolve()
        if not target.is_relative_to(work) or not target.is_file():
            raise FileNotFoundError(f"run '{run_id}' has no file '{path}'")
        return target

    def start(self, request: RunRequest) -> Iterator[RunEvent]:
        """Check and stage the run (errors raise here, before any event), then its events."""
        if request.entry not in {f.path for f in request.files}:
            raise SandboxError(f"entry '{request.entry}' is not one of the run's files")
        if sum(len(f.content) for f in request.files) > MAX_SOURCE_BYTES:
            raise SandboxError(f"the run's files are over {MAX_SOURCE_BYTES // 2**20} MiB")
        return self._events(request, self._stage_in_slot(request))

    def _stage_in_slot(self, request: RunRequest) -> RunFolder:
        """Take a run slot (``SandboxBusy`` if none is free) and stage; the caller's
        events give the slot back."""
        if not self._slots.acquire(blocking=False):
            raise SandboxBusy(f"{MAX_CONCURRENT_RUNS} runs are running: try again shortly")
        try:
            return self.stage(request)
        except BaseException:
            self._slots.release()
            raise

    def stage(self, request: RunRequest) -> RunFolder:
        """The run's folder with its files written (refused if the id was used)."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._prune()
        folder = self.folder(request.run_id)
        try:
            folder.root.mkdir()
        except FileExistsError:
            raise SandboxError(f"run '{request.run_id}' exists already") from None
        folder.work.mkdir()
        folder.build.mkdir()
        for source in request.files:
            target = folder.work / source.path
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                data = (base64.b64decode(source.content, validate=True) if source.base64
                        else source.content.encode())  # fmt: skip
                target.write_bytes(data)
            except (ValueError, OSError) as exc:  # bad base64, lone surrogates, a file/dir clash
                raise SandboxError(f"file {source.path!r} cannot be written: "
                                   f"{type(exc).__name__}") from None
        folder.stdin.write_bytes(request.stdin.encode(errors="replace"))
        # The sandbox user (UID 1000 inside) is the agent's user outside: same owner.
        return folder

    def _prune(self) -> None:
        folders = sorted((p for p in self.runs_dir.iterdir() if p.is_dir()),
                         key=lambda p: p.stat().st_mtime)  # fmt: skip
        for old in folders[: max(0, len(folders) - (KEEP_RUNS - 1))]:  # room for this one
            shutil.rmtree(old, ignore_errors=True)

    def _events(self, request: RunRequest, folder: RunFolder) -> Iterator[RunEvent]:
        try:
            yield RunEvent(kind=RunEventKind.STARTED)
            toolchain = TOOLCHAINS[request.language]
            before = _digests(folder.work)
            result = yield from self._compile_and_run(request, toolchain, folder)
            result.files = _produced(folder.work, before)
            shutil.rmtree(folder.build, ignore_errors=True)
            yield RunEvent(kind=RunEventKind.RESULT, result=result)
        except Exception as exc:  # the sandbox failed, not the program: say so in-band
            result = RunResult(outcome=RunOutcome.ERROR, duration_s=0.0,
                               error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            yield RunEvent(kind=RunEventKind.RESULT, result=result)
        finally:
            self._slots.release()

    def serve(self, request: RunRequest, cancel: threading.Event,
              log_path: Path) -> tuple[RunFolder, Iterator[RunEvent]]:
        """Start a web artifact's server: like a run, with ``$PORT`` set and the relay
        beside it; ``cancel`` stops it. The events go on as long as it runs."""
        folder = self._stage_in_slot(request)

        def events() -> Iterator[RunEvent]:
            try:
                toolchain = TOOLCHAINS[request.language]
                with log_path.open("a") as log:
                    result = yield from _logged(self._compile_and_run(
                        request, toolchain, folder, server=True, cancel=cancel), log)
                yield RunEvent(kind=RunEventKind.RESULT, result=result)
            finally:
                self._slots.release()

        return folder, events()

    def _compile_and_run(self, request: RunRequest, toolchain: Toolchain,
                         folder: RunFolder, server: bool = False,
                         cancel: threading.Event | None = None,
                         ) -> Generator[RunEvent, None, RunResult]:
        limits = request.limits
        env = {"PATH": PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
               **toolchain.env}  # fmt: skip
        argv = [*toolchain.run(request.entry), *request.args]
        if server:  # the relay bridges the agent's socket to $PORT in the sandbox's network
            env["PORT"] = str(WEB_APP_PORT)
            relay = f'python3 {SANDBOX_RELAY} {WEB_SOCKET} "$PORT" & exec "$@"'
            argv = ["sh", "-c", relay, "sh", *argv]
        compile_s = None
        if toolchain.compile is not None and request.language in COMPILED:
            yield RunEvent(kind=RunEventKind.PHASE, phase=RunPhase.COMPILE)
            sources = source_files(request.language, [f.path for f in request.files])
            compile_limits = limits.model_copy(update={
                "wall_s": limits.compile_s, "cpu_s": limits.compile_s,
                "memory_mib": max(limits.memory_mib, COMPILE_MEMORY_MIB),
                "pids": max(limits.pids, 128)})  # fmt: skip
            built = yield from self._phase(f"{request.run_id}-compile", folder,
                                           toolchain.compile(request.entry, sources), env,
                                           compile_limits, stdin=None, cancel=cancel)  # fmt: skip
            compile_s = round(built.duration_s, 3)
            if built.returncode != 0 or built.limit is not None:
                return _result(built, compile_s=compile_s, compiling=True,
                               diagnostics=toolchain.diagnostics("".join(built.text)))
        yield RunEvent(kind=RunEventKind.PHASE, phase=RunPhase.RUN)
        ran = yield from self._phase(f"{request.run_id}-run", folder, argv, env, limits,
                                     stdin=folder.stdin, cancel=cancel)
        return _result(ran, compile_s=compile_s)

    def _phase(self, name: str, folder: RunFolder, argv: list[str], env: dict[str, str],
               limits: RunLimits, stdin: Path | None, cancel: threading.Event | None = None,
               ) -> Generator[RunEvent, None, _Phase]:
        group = self.jail.group(name, limits.memory_mib, limits.pids)
        try:
            return (yield from _watch(group, self.launcher(folder, argv, env, limits),
                                      folder, limits, stdin, cancel))  # fmt: skip
        finally:
            group.close()


def _watch(group: RunGroup, argv: list[str], folder: RunFolder, limits: RunLimits,
           stdin: Path | None, cancel: threading.Event | None = None,
           ) -> Generator[RunEvent, None, _Phase]:
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
    return _Phase(returncode=code, duration_s=time.monotonic() - started, limit=limit,
                  truncated=truncated, usage_cpu_s=usage.cpu_s,
                  peak_memory_mib=usage.peak_memory_mib, oom_killed=usage.oom_kills > 0,
                  stdout_bytes=counted[RunEventKind.STDOUT],
                  stderr_bytes=counted[RunEventKind.STDERR], text=text)  # fmt: skip


def _logged(events: Generator[RunEvent, None, RunResult],
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


def _result(phase: _Phase, compile_s: float | None, compiling: bool = False,
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


def _digests(work: Path) -> dict[str, str]:
    return {
        p.relative_to(work).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(work.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _produced(work: Path, before: dict[str, str]) -> list[ProducedFile]:
    """Files new or changed in the working folder, in path order (at most a few hundred)."""
    after = _digests(work)
    return [
        ProducedFile(path=path, size=(work / path).stat().st_size, sha256=digest)
        for path, digest in after.items()
        if before.get(path) != digest
    ][:MAX_REPORTED_FILES]


def open_sandbox(data_dir: Path) -> Sandbox:
    """The VM's sandbox: bubblewrap in the agent's delegated cgroup subtree.

    Raises ``SandboxUnavailable`` naming what is missing (only the artifacts image
    has bubblewrap; only the agent's unit delegates its cgroup).
    """
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable("this VM has no sandbox (bubblewrap): artifacts run in "
                                 "a VM of the artifacts subsystem")  # fmt: skip
    jail = CgroupJail.delegated()
    if jail is None:
        raise SandboxUnavailable("the agent's cgroup is not delegated (Delegate= in "
                                 "somnus-agent.service): no run limits, so no runs")  # fmt: skip
    jail.setup()
    etc = data_dir / "sandbox-etc"
    write_sandbox_etc(etc)
    return Sandbox(data_dir, jail, bwrap_launcher(etc))
