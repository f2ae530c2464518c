"""The project repository inside the VM: state, bundle in and out, over one SSH call each.

Everything runs through a :class:`Remote` (a shell plus file copies), so the same
code drives the VM over SSH and, in tests, a folder on the host.
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.errors import Conflict, GuestError
from orchestrator.ssh import CommandResult, SSHTarget, get_file, put_file
from orchestrator.ssh import run as ssh_run

REPO_DIR = "/home/somnus/project"


class Remote(Protocol):
    """Where the project repository lives: a shell and file copies in and out."""

    repo_dir: str

    def sh(self, script: str, timeout_s: float = 120.0) -> CommandResult: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...


@dataclass
class SSHRemote:
    """A project VM, reached with the orchestrator's own key."""

    target: SSHTarget
    repo_dir: str = REPO_DIR

    def sh(self, script: str, timeout_s: float = 120.0) -> CommandResult:
        return ssh_run(self.target, script, timeout_s)

    def put(self, local: Path, remote: str) -> None:
        put_file(self.target, local, remote)

    def get(self, remote: str, local: Path) -> None:
        get_file(self.target, remote, local)


@dataclass(frozen=True)
class RepoState:
    """What the repository in the VM looks like before Somnus changes it."""

    exists: bool
    branch: str | None = None
    head: str | None = None  # None: no commits yet
    dirty: tuple[str, ...] = ()


def check(result: CommandResult, what: str) -> str:
    """``stdout`` of a successful command, else a one-line GuestError."""
    if result.exit_code != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise GuestError(f"{what} failed: {detail[-1] if detail else f'exit {result.exit_code}'}")
    return result.stdout


def in_repo(remote: Remote, script: str) -> str:
    """``script`` with ``set -e`` in the repository folder."""
    return f"set -e; cd {shlex.quote(remote.repo_dir)}; {script}"


def repo_state(remote: Remote) -> RepoState:
    q = shlex.quote(remote.repo_dir)
    out = check(remote.sh(
        f"if [ ! -d {q}/.git ]; then echo none; exit 0; fi; "
        f"cd {q}; echo repo; git symbolic-ref --short -q HEAD || echo; "
        "git rev-parse --verify -q HEAD || echo; git status --porcelain"), "reading the repository")
    lines = out.split("\n")
    if lines[0] != "repo":
        return RepoState(exists=False)
    dirty = tuple(ln for ln in lines[3:] if ln.strip())
    return RepoState(exists=True, branch=lines[1] or None, head=lines[2] or None, dirty=dirty)


def require_clean(state: RepoState, project: str) -> None:
    if state.dirty:
        shown = ", ".join(ln[3:] for ln in state.dirty[:3]) + (" …" if len(state.dirty) > 3 else "")
        raise Conflict(f"project '{project}' has uncommitted changes ({shown}); "
                       "commit or stash them first")


def init_remote_repo(remote: Remote, branch: str) -> None:
    """An empty repository for the user (and later promotions) to fill."""
    q = shlex.quote(remote.repo_dir)
    check(remote.sh(f"mkdir -p {q} && git -C {q} init -q -b {shlex.quote(branch)}"),
          "creating the repository")


def scratch_path(what: str) -> str:
    """A fresh file name in the VM's /tmp for one transfer."""
    return f"/tmp/somnus-{what}-{uuid.uuid4().hex[:10]}.bundle"


def import_bundle(remote: Remote, bundle: Path, branch: str) -> str:
    """Copy ``bundle`` in and fast-forward ``branch`` (creating the repo if needed); new HEAD."""
    target = scratch_path("in")
    remote.put(bundle, target)
    q, b, t = shlex.quote(remote.repo_dir), shlex.quote(branch), shlex.quote(target)
    # An unborn branch fast-forwards too, so a new and an existing repo take the same path.
    script = (f"trap 'rm -f {t}' EXIT; set -e; mkdir -p {q}; cd {q}; "
              f"[ -d .git ] || git init -q -b {b}; "
              f"git fetch -q {t} {b}; git merge --ff-only -q FETCH_HEAD; git rev-parse HEAD")
    return check(remote.sh(script, timeout_s=600), "importing the bundle").strip()


def export_bundle(remote: Remote, branch: str, dest: Path) -> Path:
    """The VM repository's ``branch`` as a bundle on the host, at ``dest``."""
    source = scratch_path("out")
    t = shlex.quote(source)
    check(remote.sh(in_repo(remote, f"git bundle create -q {t} {shlex.quote(branch)}"),
                    timeout_s=600), "bundling the repository")
    try:
        remote.get(source, dest)
    finally:
        remote.sh(f"rm -f {t}")
    return dest
