"""How one sandbox starts: a run's folder, the sandbox's /etc, and the command line.

``prlimit`` (CPU seconds, open files, file size) then ``setpriv`` then ``bwrap`` with every
namespace new (no network but loopback, its own PIDs), no capabilities, UID 1000, and an
allow-listed filesystem: ``/usr`` read-only, a synthetic ``/etc``, the run's ``/work`` and
``/build``, a tmpfs ``/tmp``. Why bubblewrap and not podman: the VM is already the hard
boundary, bubblewrap needs no root filesystem or registry, and under TCG it starts a
sandbox in ~0.5 s where podman's conmon, crun and storage cost seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guest_agent.protocol.runs import RunLimits
from guest_agent.sandbox.toolchains import BUILD, WORK

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
