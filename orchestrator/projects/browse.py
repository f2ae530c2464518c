"""Reading a project's repository in its VM: the files at HEAD, one file, the log, a
commit's diff (what the app's projects view shows).

Each read is one ``git`` command over SSH; nothing is written. Output is bounded, and
every argument that comes from the user is checked and quoted first.
"""

from __future__ import annotations

import base64
import re
import shlex

from pydantic import BaseModel

from core.errors import InvalidInput, NotFound
from orchestrator.projects.remote import Remote, check, in_repo

MAX_FILE_BYTES = 512 * 1024  # a file view shows at most this much
MAX_DIFF_BYTES = 1 << 20
MAX_FILES = 5000
SHA = re.compile(r"^[0-9a-f]{4,40}$")
FIELD, RECORD = "\x1f", "\x1e"  # separators git's --format writes and no subject holds


class RepoFile(BaseModel):
    path: str
    size: int


class RepoTree(BaseModel):
    """Every file tracked at HEAD (the first ``MAX_FILES``, by path)."""

    branch: str | None
    head: str | None
    files: list[RepoFile]
    truncated: bool = False


class FileView(BaseModel):
    """One file at HEAD: its text, or ``binary`` (then ``text`` is None)."""

    path: str
    size: int
    binary: bool
    truncated: bool
    text: str | None


class CommitLine(BaseModel):
    sha: str
    author: str
    date: str  # ISO 8601, as git wrote it
    subject: str
    kind: str | None = None  # 'ai' or 'undo' when Somnus made it


class CommitDiff(BaseModel):
    sha: str
    subject: str
    diff: str  # unified, with rename detection
    truncated: bool


def _path(path: str) -> str:
    if not path or "\0" in path or path.startswith(("/", "-")) or ".." in path.split("/"):
        raise InvalidInput(f"not a path inside the repository: {path!r}")
    return path


def tree(remote: Remote) -> RepoTree:
    out = check(remote.sh(in_repo(
        remote, "git symbolic-ref --short -q HEAD || echo; git rev-parse -q --verify HEAD || "
        "{ echo; exit 0; }; git ls-tree -r -l --full-tree -z HEAD")), "listing the files")
    branch, head, listing = [*out.split("\n", 2), "", ""][:3]
    files = []
    for entry in listing.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 4 and parts[1] == "blob":
            files.append(RepoFile(path=path, size=int(parts[3]) if parts[3].isdigit() else 0))
    return RepoTree(branch=branch or None, head=head or None, files=files[:MAX_FILES],
                    truncated=len(files) > MAX_FILES)


def read_file(remote: Remote, path: str) -> FileView:
    spec = shlex.quote(f"HEAD:{_path(path)}")
    result = remote.sh(in_repo(
        remote, f"git cat-file -s {spec}; git cat-file blob {spec} | head -c {MAX_FILE_BYTES} "
                "| base64 -w0"))
    if result.exit_code != 0:
        raise NotFound(f"no file '{path}' at HEAD")
    size_line, _, encoded = result.stdout.partition("\n")
    data = base64.b64decode(encoded.strip() or b"")
    size = int(size_line.strip() or 0)
    try:
        text: str | None = data.decode()
        binary = "\0" in (text or "")
    except UnicodeDecodeError:
        text, binary = None, True
    return FileView(path=path, size=size, binary=binary, truncated=size > len(data),
                    text=None if binary else text)


def log(remote: Remote, limit: int, kinds: dict[str, str]) -> list[CommitLine]:
    """The newest ``limit`` commits of HEAD; ``kinds`` marks the ones Somnus made."""
    fmt = shlex.quote(f"%H{FIELD}%an{FIELD}%aI{FIELD}%s{RECORD}")
    out = check(remote.sh(in_repo(
        remote, f"git rev-parse -q --verify HEAD >/dev/null || exit 0; "
                f"git log -n {int(limit)} --format={fmt}")), "reading the log")
    lines = []
    for record in out.split(RECORD):
        fields = record.strip("\n").split(FIELD)
        if len(fields) == 4:
            sha, author, date, subject = fields
            lines.append(CommitLine(sha=sha, author=author, date=date, subject=subject,
                                    kind=kinds.get(sha)))
    return lines


def commit(remote: Remote, sha: str) -> CommitDiff:
    if not SHA.match(sha):
        raise InvalidInput(f"not a commit hash: {sha!r}")
    fmt = shlex.quote(f"%H{FIELD}%s{RECORD}")
    result = remote.sh(in_repo(
        remote, f"git show -M --no-color --format={fmt} {sha} -- | head -c {MAX_DIFF_BYTES}"))
    if result.exit_code != 0 or RECORD not in result.stdout:
        raise NotFound(f"no commit {sha} in the repository")
    head, _, diff = result.stdout.partition(RECORD)
    full, _, subject = head.partition(FIELD)
    return CommitDiff(sha=full.strip(), subject=subject, diff=diff.lstrip("\n"),
                      truncated=len(result.stdout.encode()) >= MAX_DIFF_BYTES)
