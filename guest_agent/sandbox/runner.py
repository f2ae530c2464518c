"""Run a program in a disposable sandbox and stream what it does.

Each run gets a folder on the agent's disk (``runs/<id>/work``: the program's files,
its working folder; ``build``: compiler output) and, per phase (compile, run), a fresh
sandbox (``guest_agent.sandbox.bwrap``) inside a cgroup of the agent's delegated subtree
(``guest_agent.sandbox.cgroups``), watched until it ends or crosses a limit
(``guest_agent.sandbox.watch``), so the next run starts clean. A web artifact's server
is a run too, started by ``serve`` and stopped by its user (``guest_agent.sandbox.web``).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

from guest_agent.protocol.runs import (
    COMPILE_MEMORY_MIB,
    COMPILED,
    MAX_SOURCE_BYTES,
    WEB_APP_PORT,
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
from guest_agent.sandbox.bwrap import (
    PATH,
    SANDBOX_RELAY,
    WEB_SOCKET,
    Launcher,
    RunFolder,
    bwrap_launcher,
    write_sandbox_etc,
)
from guest_agent.sandbox.cgroups import CgroupJail, Jail
from guest_agent.sandbox.toolchains import TOOLCHAINS, Toolchain
from guest_agent.sandbox.watch import Phase, logged, phase_result, watch

KEEP_RUNS = 20  # run folders kept for downloads; older ones are removed
MAX_CONCURRENT_RUNS = 2
MAX_REPORTED_FILES = 200


class SandboxError(Exception):
    """A run that cannot start (no sandbox in this VM, a bad request)."""


class SandboxUnavailable(SandboxError):
    """This VM cannot run anything sandboxed."""


class SandboxBusy(SandboxError):
    """``MAX_CONCURRENT_RUNS`` are running already."""


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
            yield RunEvent(kind=RunEventKind.STARTED, data=request.run_id)
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
                    result = yield from logged(self._compile_and_run(
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
                return phase_result(built, compile_s=compile_s, compiling=True,
                               diagnostics=toolchain.diagnostics("".join(built.text)))
        yield RunEvent(kind=RunEventKind.PHASE, phase=RunPhase.RUN)
        ran = yield from self._phase(f"{request.run_id}-run", folder, argv, env, limits,
                                     stdin=folder.stdin, cancel=cancel)
        return phase_result(ran, compile_s=compile_s)

    def _phase(self, name: str, folder: RunFolder, argv: list[str], env: dict[str, str],
               limits: RunLimits, stdin: Path | None, cancel: threading.Event | None = None,
               ) -> Generator[RunEvent, None, Phase]:
        group = self.jail.group(name, limits.memory_mib, limits.pids)
        try:
            return (yield from watch(group, self.launcher(folder, argv, env, limits),
                                      folder, limits, stdin, cancel))  # fmt: skip
        finally:
            group.close()


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
