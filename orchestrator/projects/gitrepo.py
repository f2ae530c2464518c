"""Host-side git with GitPython: build a session's commits, clone a source, bundle.

Repositories are built on the host in a temporary folder and travel into the
project VM as a git bundle, so the VM needs no network and the host no
credentials for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from git import Actor, GitCommandError, Repo

from core.errors import InvalidInput
from orchestrator.devsessions import CommitStep

AI_NAME = "Somnus AI"
AI_EMAIL = "ai@somnus.local"
AI_AUTHOR = Actor(AI_NAME, AI_EMAIL)
# Clones must never stop to ask for a password: there is nobody to answer.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}


def repo_path(root: Path, path: str) -> Path:
    """``path`` inside ``root``; refuses anything that could land outside it or in .git."""
    parts = path.split("/")  # raw: PurePath would quietly drop "." and empty parts
    if "\\" in path or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
        raise InvalidInput(f"'{path}' is not a usable repository path")
    return root.joinpath(*parts)


def init_repo(path: Path, branch: str = "main") -> Repo:
    return Repo.init(path, mkdir=True, initial_branch=branch)


def commit_steps(repo: Repo, steps: Sequence[CommitStep]) -> list[str]:
    """One commit per step, in order, authored by Somnus AI; returns their hashes.

    Each step's ``files`` is the session's whole tree after it; files the session
    never had are left alone, so steps can be added on top of an existing repo.
    """
    return [
        commit_files(repo, {path: text.encode() for path, text in step.files.items()},
                     step.message, step.timestamp)
        for step in steps
    ]


def commit_files(repo: Repo, files: dict[str, bytes], message: str, when: datetime) -> str:
    """Write ``files`` into the work tree and commit them as Somnus AI; the new hash."""
    root = Path(repo.working_tree_dir or ".")
    for path, data in files.items():
        target = repo_path(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)  # bytes: no newline translation
    # GitPython's index ignores .gitignore: a file is committed even if ignored.
    repo.index.add(list(files))
    stamp = f"{int(when.timestamp())} +0000"  # git's own format: no parsing
    commit = repo.index.commit(message, author=AI_AUTHOR, committer=AI_AUTHOR,
                               author_date=stamp, commit_date=stamp)
    return commit.hexsha


def source_url(source: str) -> str:
    """A local path made absolute (it is recorded and must mean the same later); URLs as given."""
    local = Path(source).expanduser()
    return str(local.resolve()) if local.exists() else source


def clone_source(source: str, dest: Path) -> Repo:
    """Clone a repository URL or local path, full history; refuses an empty one."""
    try:
        repo = Repo.clone_from(source_url(source), dest, env=GIT_ENV)
    except GitCommandError as exc:
        raise InvalidInput(f"cannot clone '{source}': {_git_error(exc)}") from exc
    if not repo.head.is_valid():
        raise InvalidInput(f"'{source}' has no commits to import")
    return repo


def current_branch(repo: Repo) -> str:
    if repo.head.is_detached:
        raise InvalidInput("the repository's HEAD is detached; check out a branch first")
    return repo.active_branch.name


def bundle(repo: Repo, dest: Path, branch: str, base: str | None = None) -> Path:
    """A bundle of ``branch``; with ``base``, only the commits after it (the VM has it)."""
    repo.git.bundle("create", str(dest), branch, *([f"^{base}"] if base else []))
    return dest


def _git_error(exc: GitCommandError) -> str:
    """Git's own reason, as one line: its last ``fatal:``/``error:`` line.

    GitPython wraps stderr as ``stderr: '<text>'`` with the closing quote on a line of
    its own, so the wrapper is taken off before the lines are read (else that quote is
    the "last line" and the reason comes out empty).
    """
    text = str(exc.stderr or "").strip().removeprefix("stderr:").strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines
    if not reasons:
        return f"git exited with status {exc.status}"
    return reasons[-1].removeprefix("fatal:").removeprefix("error:").strip()
