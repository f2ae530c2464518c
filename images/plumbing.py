"""Build plumbing shared by the wheel and image stages: logged commands, locks, logs."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO

from core.config import Settings, load_settings
from core.errors import ImageBuildError, InsufficientResources
from core.types import Progress


class BuildLog:
    """One log file for a build; command output goes here, one-line notes to ``progress``."""

    def __init__(self, path: Path, progress: Progress | None = None) -> None:
        self.path = path
        self.progress = progress
        self.started = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    @classmethod
    def new(cls, settings: Settings, kind: str, progress: Progress | None = None) -> BuildLog:
        """A fresh, timestamped log under ``<cache>/logs``."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(settings.cache / "logs" / f"{kind}-{stamp}-{os.getpid()}.log", progress)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, message: str) -> None:
        """Report progress (with elapsed seconds) and keep it in the log."""
        line = f"[{self.elapsed:6.1f}s] {message}"
        self.write(f"### {line}\n")
        if self.progress:
            self.progress(line)

    def write(self, text: str) -> None:
        with self.path.open("a") as out:
            out.write(text)

    def run(
        self,
        stage: str,
        cmd: Sequence[str | Path],
        env: Mapping[str, str] | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        """Run ``cmd`` with its output appended to the log; ``ImageBuildError`` if it fails.

        With ``heartbeat_s``, a long command reports every so often that it still runs,
        with the last progress mark (``[ 42%]``) its output showed.
        """
        with self.path.open("a") as out, self._heartbeat(stage, heartbeat_s):
            self._run(stage, cmd, env, out)

    @contextmanager
    def _heartbeat(self, stage: str, every_s: float | None) -> Iterator[None]:
        if not every_s or self.progress is None:
            yield
            return
        done = threading.Event()

        def beat() -> None:
            started = time.monotonic()
            while not done.wait(every_s):
                mark = _last_percent(self.path)
                self.note(f"{stage}: still running after {time.monotonic() - started:.0f}s"
                          + (f", at {mark}" if mark else ""))

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def capture(
        self, stage: str, cmd: Sequence[str | Path], env: Mapping[str, str] | None = None
    ) -> str:
        """Run ``cmd`` and return its stdout (stderr goes to the log)."""
        return self._run(stage, cmd, env, subprocess.PIPE)

    def _run(
        self,
        stage: str,
        cmd: Sequence[str | Path],
        env: Mapping[str, str] | None,
        stdout: IO[str] | int,
    ) -> str:
        argv = [str(a) for a in cmd]
        self.write(f"$ {shlex.join(argv)}\n")
        started = time.monotonic()
        with self.path.open("a") as err:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=err if stdout == subprocess.PIPE else subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    text=True,
                    check=False,
                )
            except OSError as exc:
                raise ImageBuildError(
                    f"stage '{stage}': cannot run {argv[0]}: {exc.strerror}; log: {self.path}"
                ) from exc
        self.write(f"# exit {result.returncode} after {time.monotonic() - started:.1f}s\n")
        if result.returncode != 0:
            raise ImageBuildError(
                f"stage '{stage}' failed: {Path(argv[0]).name} exited {result.returncode}; "
                f"log: {self.path}"
            )
        return result.stdout or ""


_PERCENT = re.compile(rb"\[ *(\d{1,3})%\]")


def _last_percent(log: Path, tail_bytes: int = 16384) -> str | None:
    """The last ``[ NN%]`` progress mark (CMake's, say) in the log's tail."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - tail_bytes))
        marks = _PERCENT.findall(handle.read())
    return f"{int(marks[-1])}%" if marks else None


# Host tool -> the Debian package that ships it.
TOOL_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "chroot": "coreutils",
    "tar": "tar",
    "dpkg-query": "dpkg",
    "dpkg-architecture": "dpkg-dev",
}


def require_tools(*tools: str) -> None:
    """``ImageBuildError`` naming the first missing host tool and its package."""
    for tool in tools:
        if shutil.which(tool) is None:
            package = TOOL_PACKAGES.get(tool, tool)
            raise ImageBuildError(f"'{tool}' is missing on this host: apt-get install {package}")


def check_free_space(path: Path, need_bytes: int) -> None:
    """``InsufficientResources`` unless the filesystem of ``path`` has ``need_bytes`` free."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise InsufficientResources(
            f"building the image needs {need_bytes / 1024**3:.1f} GiB free in {path}, "
            f"only {free / 1024**3:.1f} GiB free"
        )


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise builders across processes (CLI and API may both start a build)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_world_readable(root: Path) -> None:
    """Dirs 0755, files 0644: libvirt's QEMU user must read base disks, kernels, initrds."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def build_once(final: Path, ready: Callable[[], bool], build: Callable[[Path], None],
               lock: Path) -> None:
    """Make the cached folder ``final`` unless ``ready()``: under ``lock`` (checked again
    once held), ``build`` fills a staging folder beside it, which is made world-readable
    and renamed into place, so a failed or killed build leaves nothing that looks done.

    ``build`` must not take ``lock`` itself: ensure what it needs before calling this.
    """
    if ready():
        return
    with exclusive_lock(lock):
        if ready():
            return
        staged = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            build(staged)
            make_world_readable(staged)
            publish_dir(staged, final)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


def publish_dir(staged: Path, final: Path) -> bool:
    """Atomically move a finished ``staged`` folder to ``final``; False if one won the race."""
    try:
        os.rename(staged, final)
    except OSError:
        if final.exists():
            shutil.rmtree(staged, ignore_errors=True)
            return False
        raise
    return True


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [p for p in points if p.startswith(prefix)]


def remove_tree(path: Path, log: BuildLog | None = None) -> None:
    """rmtree that first unmounts what a killed mmdebstrap left mounted inside.

    Its chroot bind-mounts host /dev nodes and /sys: a plain rmtree would walk into them.
    """
    if not path.exists():
        return
    for point in sorted(_mounts_under(path), reverse=True):  # deepest first
        subprocess.run(["umount", "--lazy", point], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    if left := _mounts_under(path):
        if log:
            log.write(f"# not deleting {path}: still mounted: {left}\n")
        return
    shutil.rmtree(path, ignore_errors=True)


def print_ensured(ensure: Callable[[Settings, Progress], Path]) -> int:
    """A ``python -m images.…`` entry point: make sure one cached artefact exists and print
    its path (progress goes to stderr); a build error is one line and exit status 1."""
    try:
        path = ensure(load_settings(), lambda msg: print(msg, file=sys.stderr))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
