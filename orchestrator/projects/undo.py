"""Undo of AI commits with aider's guards, and git as the version store.

Only commits Somnus recorded as its own may be undone; a dirty tree or a merge
commit is refused. Undo is a ``git revert`` committed as a new commit, so
nothing is deleted and undoing again walks further back past earlier undos.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import Conflict
from orchestrator.projects.gitrepo import AI_EMAIL, AI_NAME
from orchestrator.projects.remote import Remote, check, in_repo
from orchestrator.projects.tables import CommitKind, ProjectCommitRow

# How far back the walk looks for the AI commit to undo; undos stack up one per commit.
MAX_WALK = 500
IDENTITY = f"-c user.name={shlex.quote(AI_NAME)} -c user.email={shlex.quote(AI_EMAIL)}"


@dataclass(frozen=True)
class UndoTarget:
    sha: str
    subject: str
    files: tuple[str, ...]


def find_target(remote: Remote, owned: Mapping[str, ProjectCommitRow]) -> UndoTarget:
    """The newest AI commit not yet undone, if only Somnus commits lie above it.

    Walks first parents from HEAD: an undo commit marks the commit it reverted as
    done; any commit Somnus did not make, or a merge, stops the undo.
    """
    status = check(remote.sh(in_repo(remote, "git status --porcelain")), "git status")
    if status.strip():
        raise Conflict("the project has uncommitted changes; commit or stash them before undo")
    walk = check(remote.sh(in_repo(remote, f"git rev-list --first-parent --parents "
                                            f"--max-count={MAX_WALK} HEAD")), "git rev-list")
    undone: set[str] = set()
    for line in walk.splitlines():
        sha, *parents = line.split()
        if len(parents) > 1:
            raise Conflict(f"commit {sha[:8]} is a merge commit; undo cannot revert it safely")
        commit = owned.get(sha)
        if commit is None:
            raise Conflict(f"the last commit {sha[:8]} was not made by Somnus AI; "
                           "undo only reverts Somnus's own commits")
        if commit.kind == CommitKind.UNDO:
            if commit.reverts:
                undone.add(commit.reverts)
            continue
        if sha not in undone:
            return UndoTarget(sha, commit.subject, _files(remote, sha))
    raise Conflict("no AI commit is left to undo")


def _files(remote: Remote, sha: str) -> tuple[str, ...]:
    out = check(remote.sh(in_repo(remote, "git -c core.quotepath=off show --name-only "
                                          f"--format= {shlex.quote(sha)}")), "git show")
    return tuple(ln for ln in out.splitlines() if ln)


def revert(remote: Remote, target: UndoTarget) -> str:
    """Commit the inverse of ``target`` as Somnus AI; the new commit's hash."""
    message = (f'Undo "{target.subject}"\n\nThis reverts commit {target.sha}: the user '
               f"asked Somnus to undo this AI change.\n\nSomnus-Undo: {target.sha}\n")
    sha = shlex.quote(target.sha)
    result = remote.sh(in_repo(
        remote, f"git {IDENTITY} revert --no-commit {sha} || {{ git revert --abort; exit 1; }}; "
                f"git {IDENTITY} commit -q -m {shlex.quote(message)}; git rev-parse HEAD"))
    if result.exit_code != 0:
        raise Conflict(f"commit {target.sha[:8]} does not revert cleanly on the current "
                       "tree; resolve it by hand")
    return result.stdout.strip().splitlines()[-1]


def undo_note(project: str, target: UndoTarget, new_sha: str) -> str:
    """What the model is told in the project's next chat turn."""
    files = ", ".join(target.files) or "no files"
    return (f"In project '{project}' the user undid the AI commit {target.sha[:8]} "
            f'("{target.subject}"), touching {files}; it was reverted by commit '
            f"{new_sha[:8]}. Do not re-apply the undone change unless the user asks for it.")
