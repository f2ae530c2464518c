"""Project repositories without a VM: commits from a session's plan, bundles, undo guards.

A folder on the host stands in for the project VM (``LocalRemote``): the same
shell scripts and bundle transfers run there as over SSH.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from git import Repo

from core.config import Settings
from core.errors import Conflict, GuestError, InvalidInput, NotFound
from guest_agent.protocol import AgentStatus, HealthResponse, MemoryAddResponse, MemoryCreate
from orchestrator.agent_client import AgentClient
from orchestrator.database import open_database
from orchestrator.devsessions import (
    CommitStep,
    DevSessionEventType,
    DevSessionManager,
    DevSessionStore,
)
from orchestrator.projects import browse, gitrepo
from orchestrator.projects.memories import repo_memories, session_memories, store
from orchestrator.projects.remote import (
    RepoState,
    export_bundle,
    import_bundle,
    init_remote_repo,
    repo_state,
)
from orchestrator.projects.tables import CommitKind, ProjectCommitRow
from orchestrator.projects.undo import find_target, revert, undo_note
from orchestrator.ssh import CommandResult

E = DevSessionEventType


@dataclass
class LocalRemote:
    """A host folder in place of the VM: same scripts, file copies instead of SFTP."""

    repo_dir: str

    def sh(self, script: str, timeout_s: float = 120.0) -> CommandResult:
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def put(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)


def git(repo: Path | str, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "core.quotepath=off", *args],
                          capture_output=True, text=True, check=True).stdout


def fence(path: str, body: str, lang: str = "python") -> str:
    return f"```{lang} {path}\n{body}```\n"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[DevSessionManager]:
    engine = open_database(Settings(home=tmp_path / "home").db_path)
    yield DevSessionManager(DevSessionStore(engine))
    engine.dispose()


@pytest.fixture
def plan(manager: DevSessionManager) -> tuple[DevSessionManager, list[CommitStep]]:
    """A session with a create, an update, a second (unicode) file and a rollback."""
    s = manager.create_session("ann", title="greeter")
    sid = s.dev_session_id
    manager.record_turn(sid, "write hello.py", fence("hello.py", "print('hi')\n"))
    manager.record_turn(sid, "greet the world", fence("hello.py", "print('hello, world')\n"))
    manager.record_turn(sid, "add a note", fence("docs/notés-ünï.md", "Grüße ✓\n", "markdown"))
    block = manager.resolve_block_id(sid, "hello.py")
    manager.rollback_code_block(sid, block, 1)
    return manager, manager.commit_plan(sid)


def build(tmp_path: Path, steps: list[CommitStep]) -> tuple[Repo, list[str]]:
    repo = gitrepo.init_repo(tmp_path / "built")
    return repo, gitrepo.commit_steps(repo, steps)


def test_one_commit_per_step_in_order_with_prompt_and_author(
        tmp_path: Path, plan: tuple[DevSessionManager, list[CommitStep]]) -> None:
    _, steps = plan
    repo, shas = build(tmp_path, steps)
    assert [s.event_type for s in steps] == [E.CODE_BLOCK_CREATED, E.CODE_BLOCK_MODIFIED,
                                             E.CODE_BLOCK_CREATED, E.CODE_BLOCK_ROLLED_BACK]
    log = list(repo.iter_commits("main"))[::-1]
    assert [c.hexsha for c in log] == shas
    assert [c.message for c in log] == [s.message for s in steps]
    assert "Prompt:\ngreet the world" in log[1].message
    assert log[3].message.startswith("Roll back hello.py to version 1")
    for commit in log:
        assert (commit.author.name, commit.author.email) == ("Somnus AI", "ai@somnus.local")
        assert commit.committer.email == "ai@somnus.local"
    assert log[0].authored_datetime.timestamp() == pytest.approx(steps[0].timestamp.timestamp())
    # The tree after each commit is exactly that step's files.
    for commit, step in zip(log, steps, strict=True):
        tree = {b.path: b.data_stream.read().decode() for b in commit.tree.traverse()
                if b.type == "blob"}
        assert tree == step.files
    assert git(repo.working_tree_dir or "", "status", "--porcelain") == ""


def test_unicode_paths_content_and_empty_file(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    steps = [
        CommitStep(event_id=1, event_type=E.CODE_BLOCK_CREATED, timestamp=now,
                   message="Add ünï/código.py\n\nPrompt:\nzeig mir 日本語\n",
                   files={"ünï/código.py": "s = '日本語 ✓'\n", "empty.txt": ""},
                   changed=["ünï/código.py", "empty.txt"]),
        CommitStep(event_id=2, event_type=E.CODE_BLOCK_MODIFIED, timestamp=now,
                   message="Update empty.txt to version 2\n",
                   files={"ünï/código.py": "s = '日本語 ✓'\n", "empty.txt": "no\r\nlonger\n"},
                   changed=["empty.txt"]),
    ]
    repo, _ = build(tmp_path, steps)
    root = Path(repo.working_tree_dir or "")
    assert (root / "ünï" / "código.py").read_text() == "s = '日本語 ✓'\n"
    assert (root / "empty.txt").read_bytes() == b"no\r\nlonger\n"  # no newline translation
    first = git(root, "show", "HEAD~1:empty.txt")
    assert first == ""
    assert git(root, "ls-files").split() == ["empty.txt", "ünï/código.py"]
    assert "日本語" in git(root, "log", "-1", "--format=%B", "HEAD~1")


@pytest.mark.parametrize("path", ["../escape.py", "/etc/passwd", ".git/config", "a/../../b",
                                  "", "a\\b.py", "./x"])
def test_paths_outside_the_repository_are_refused(tmp_path: Path, path: str) -> None:
    step = CommitStep(event_id=1, event_type=E.CODE_BLOCK_CREATED, timestamp=datetime.now(UTC),
                      message="x", files={path: "x"}, changed=[path])
    with pytest.raises(InvalidInput):
        build(tmp_path, [step])


def test_bundle_into_a_fresh_folder_then_more_commits_on_top(
        tmp_path: Path, plan: tuple[DevSessionManager, list[CommitStep]]) -> None:
    _, steps = plan
    remote = LocalRemote(str(tmp_path / "vm" / "project"))
    assert repo_state(remote) == RepoState(exists=False)
    repo, shas = build(tmp_path, steps[:2])
    head = import_bundle(remote, gitrepo.bundle(repo, tmp_path / "a.bundle", "main"), "main")
    assert head == shas[-1]
    state = repo_state(remote)
    assert state == RepoState(exists=True, branch="main", head=head, dirty=())

    # As promote does for a project that has history: fetch it back, add, send the new part.
    back = export_bundle(remote, "main", tmp_path / "back.bundle")
    again = Repo.clone_from(str(back), tmp_path / "again", branch="main")
    more = gitrepo.commit_steps(again, steps[2:])
    small = gitrepo.bundle(again, tmp_path / "b.bundle", "main", base=state.head)
    assert import_bundle(remote, small, "main") == more[-1]
    log = git(remote.repo_dir, "log", "--format=%H", "--reverse").split()
    assert log == shas + more
    assert git(remote.repo_dir, "status", "--porcelain") == ""
    assert (Path(remote.repo_dir) / "hello.py").read_text() == steps[-1].files["hello.py"]


def test_a_new_empty_repository_takes_the_same_import(
        tmp_path: Path, plan: tuple[DevSessionManager, list[CommitStep]]) -> None:
    _, steps = plan
    remote = LocalRemote(str(tmp_path / "vm" / "project"))
    init_remote_repo(remote, "main")
    assert repo_state(remote) == RepoState(exists=True, branch="main", head=None)
    repo, shas = build(tmp_path, steps)
    assert import_bundle(remote, gitrepo.bundle(repo, tmp_path / "x", "main"), "main") == shas[-1]


def test_dirty_files_show_in_the_state(tmp_path: Path,
                                       plan: tuple[DevSessionManager, list[CommitStep]]) -> None:
    remote = LocalRemote(str(tmp_path / "project"))
    repo, _ = build(tmp_path, plan[1])
    import_bundle(remote, gitrepo.bundle(repo, tmp_path / "x", "main"), "main")
    (Path(remote.repo_dir) / "hello.py").write_text("edited by hand\n")
    (Path(remote.repo_dir) / "new.txt").write_text("x")
    assert repo_state(remote).dirty == (" M hello.py", "?? new.txt")


# -- undo ---------------------------------------------------------------------------------


@pytest.fixture
def promoted(tmp_path: Path, plan: tuple[DevSessionManager, list[CommitStep]]
             ) -> tuple[LocalRemote, dict[str, ProjectCommitRow], list[str]]:
    """A project repo whose commits Somnus made, and the owned-commit table for it."""
    _, steps = plan
    remote = LocalRemote(str(tmp_path / "project"))
    repo, shas = build(tmp_path, steps)
    import_bundle(remote, gitrepo.bundle(repo, tmp_path / "x", "main"), "main")
    owned = {sha: ProjectCommitRow(project="p", sha=sha, kind=CommitKind.AI,
                                   subject=s.message.split("\n")[0])
             for sha, s in zip(shas, steps, strict=True)}
    return remote, owned, shas


def user_commit(remote: LocalRemote, path: str, text: str) -> str:
    (Path(remote.repo_dir) / path).write_text(text)
    git(remote.repo_dir, "add", path)
    git(remote.repo_dir, "-c", "user.name=Ann", "-c", "user.email=ann@x", "commit", "-qm", "mine")
    return git(remote.repo_dir, "rev-parse", "HEAD").strip()


def test_undo_reverts_the_last_ai_commit_as_a_new_commit(
        promoted: tuple[LocalRemote, dict[str, ProjectCommitRow], list[str]]) -> None:
    remote, owned, shas = promoted
    target = find_target(remote, owned)
    assert target.sha == shas[-1] and target.files == ("hello.py",)
    new = revert(remote, target)
    log = git(remote.repo_dir, "log", "--format=%H %ae %s").splitlines()
    assert len(log) == len(shas) + 1  # nothing deleted
    assert log[0] == f'{new} ai@somnus.local Undo "{target.subject}"'
    # The rollback is undone: hello.py is back at the updated version.
    assert (Path(remote.repo_dir) / "hello.py").read_text() == "print('hello, world')\n"
    assert git(remote.repo_dir, "status", "--porcelain") == ""
    note = undo_note("p", target, new)
    assert target.sha[:8] in note and "hello.py" in note and "Do not re-apply" in note

    # Undo again: the walk passes the undo and the undone commit, and takes the one before.
    owned[new] = ProjectCommitRow(project="p", sha=new, kind=CommitKind.UNDO, reverts=target.sha)
    second = find_target(remote, owned)
    assert second.sha == shas[-2] and "ünï" in second.files[0]
    revert(remote, second)
    assert not (Path(remote.repo_dir) / "docs").exists()


def test_undo_refuses_a_commit_somnus_did_not_make(
        promoted: tuple[LocalRemote, dict[str, ProjectCommitRow], list[str]]) -> None:
    remote, owned, _ = promoted
    mine = user_commit(remote, "mine.txt", "hand made\n")
    with pytest.raises(Conflict, match=f"{mine[:8]} was not made by Somnus AI"):
        find_target(remote, owned)


def test_undo_refuses_a_dirty_tree(
        promoted: tuple[LocalRemote, dict[str, ProjectCommitRow], list[str]]) -> None:
    remote, owned, shas = promoted
    (Path(remote.repo_dir) / "hello.py").write_text("unsaved work\n")
    with pytest.raises(Conflict, match="uncommitted changes"):
        find_target(remote, owned)
    assert git(remote.repo_dir, "rev-parse", "HEAD").strip() == shas[-1]


def test_undo_refuses_a_merge_commit(
        promoted: tuple[LocalRemote, dict[str, ProjectCommitRow], list[str]]) -> None:
    remote, owned, _ = promoted
    git(remote.repo_dir, "checkout", "-qb", "side", "HEAD~1")
    user_commit(remote, "side.txt", "side\n")
    git(remote.repo_dir, "checkout", "-q", "main")
    git(remote.repo_dir, "-c", "user.name=Ann", "-c", "user.email=ann@x", "merge", "-q",
        "--no-ff", "-m", "merge side", "side")
    merge = git(remote.repo_dir, "rev-parse", "HEAD").strip()
    # Even if Somnus had made it, a merge is never reverted.
    owned[merge] = ProjectCommitRow(project="p", sha=merge, kind=CommitKind.AI, subject="m")
    with pytest.raises(Conflict, match="merge commit"):
        find_target(remote, owned)


def test_nothing_left_to_undo(tmp_path: Path) -> None:
    remote = LocalRemote(str(tmp_path / "p"))
    now = datetime.now(UTC)
    repo, (sha,) = build(tmp_path, [CommitStep(event_id=1, event_type=E.CODE_BLOCK_CREATED,
                                               timestamp=now, message="Add a", files={"a": "1"},
                                               changed=["a"])])
    import_bundle(remote, gitrepo.bundle(repo, tmp_path / "x", "main"), "main")
    owned = {sha: ProjectCommitRow(project="p", sha=sha, kind=CommitKind.AI, subject="Add a")}
    new = revert(remote, find_target(remote, owned))  # a root commit reverts too
    owned[new] = ProjectCommitRow(project="p", sha=new, kind=CommitKind.UNDO, reverts=sha)
    with pytest.raises(Conflict, match="no AI commit is left"):
        find_target(remote, owned)


# -- sources and memories -----------------------------------------------------------------


def make_source(path: Path) -> Path:
    path.mkdir()
    (path / "README.md").write_text("# Tiny\n\nA tiny tool that greets.\n")
    (path / "src").mkdir()
    (path / "src" / "tiny.py").write_text("def greet():\n    return 'hi'\n")
    (path / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    git(path, "init", "-q", "-b", "trunk")
    git(path, "add", ".")
    git(path, "-c", "user.name=Ann", "-c", "user.email=ann@x", "commit", "-qm", "first")
    return path


@pytest.mark.parametrize("as_url", [False, True])
def test_clone_a_local_repository(tmp_path: Path, as_url: bool) -> None:
    source = make_source(tmp_path / "src")
    repo = gitrepo.clone_source(source.as_uri() if as_url else str(source), tmp_path / "c")
    assert gitrepo.current_branch(repo) == "trunk"
    assert repo.head.commit.message == "first\n"


def test_clone_refuses_a_missing_or_empty_repository(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot clone"):
        gitrepo.clone_source(str(tmp_path / "nope"), tmp_path / "c1")
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", str(empty))
    with pytest.raises(InvalidInput, match="no commits"):
        gitrepo.clone_source(str(empty), tmp_path / "c2")


def test_repo_memories_hold_the_readme_and_file_summaries(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    files = ["README.md", "logo.png", "src/tiny.py"]
    items = repo_memories(source, files, "tiny", str(source))
    readme, summary = items
    assert readme.memory_type == "document" and "A tiny tool that greets." in readme.content
    assert readme.metadata["path"] == "README.md" and "readme" in readme.tags
    assert "- src/tiny.py (29 bytes): def greet(): | return 'hi'" in summary.content
    assert "- logo.png (12 bytes) [binary]" in summary.content


def test_session_memories_hold_turns_code_and_a_summary(
        plan: tuple[DevSessionManager, list[CommitStep]]) -> None:
    manager, _ = plan
    (header,) = manager.list_sessions()
    session = manager.get_session(header.dev_session_id)
    items = session_memories(session, "greeter", "undo notice")
    kinds = [i.memory_type.value for i in items]
    assert kinds == ["dev_session"] * 4 + ["code_snippet"] * 2 + ["system_event"]
    assert "greet the world" in items[2].content
    assert "print('hi')" in items[4].content and items[4].metadata["path"] == "hello.py"


def test_memory_store_retries_once_and_reports_what_failed() -> None:
    class Flaky(AgentClient):
        """Times out on every first try of an item; the 'bad' item always fails."""

        def __init__(self) -> None:
            super().__init__(1, "t")
            self.tries: dict[str, int] = {}

        def health(self, timeout_s: float = 5.0) -> HealthResponse:
            return HealthResponse(status=AgentStatus.OK, vm_name="p", agent_version="0",
                                  uptime_s=1)

        def memory_add(self, item: MemoryCreate, background: bool = False) -> MemoryAddResponse:
            self.tries[item.content] = self.tries.get(item.content, 0) + 1
            if item.content == "bad" or self.tries[item.content] == 1:
                raise GuestError("agent at x unreachable: timed out")
            return MemoryAddResponse.model_construct(deduplicated=True)

    agent = Flaky()
    report = store(agent, [MemoryCreate(content="good"), MemoryCreate(content="bad")], 0)
    assert (report.wanted, report.stored, report.deduplicated) == (2, 1, 1)
    assert agent.tries == {"good": 2, "bad": 2}
    assert report.line() == ("1/2 memories stored (1 already there); 1 failed: "
                             "agent at x unreachable: timed out")


# -- reading the repository (the app's projects view) ----------------------------------------

def test_browse_reads_the_tree_a_file_the_log_and_a_commits_diff(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("print('one')\n")
    (repo / "logo.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=Ada", "-c", "user.email=a@x", "commit", "-qm", "first: the app")
    (repo / "src" / "app.py").write_text("print('two')\n")
    git(repo, "-c", "user.name=Ada", "-c", "user.email=a@x", "commit", "-qam",
        "second \u2014 with a dash")
    remote = LocalRemote(str(repo))
    head = git(repo, "rev-parse", "HEAD").strip()

    listing = browse.tree(remote)
    assert (listing.branch, listing.head) == ("main", head)
    assert {(f.path, f.size) for f in listing.files} == {("src/app.py", 13), ("logo.bin", 7)}
    text = browse.read_file(remote, "src/app.py")
    assert (text.text, text.binary, text.size) == ("print('two')\n", False, 13)
    binary = browse.read_file(remote, "logo.bin")
    assert binary.binary and binary.text is None
    log = browse.log(remote, 10, {head: "ai"})
    assert [(c.subject, c.author, c.kind) for c in log] == [
        ("second \u2014 with a dash", "Ada", "ai"), ("first: the app", "Ada", None)]
    diff = browse.commit(remote, head[:8])
    assert diff.sha == head and diff.subject == "second \u2014 with a dash"
    assert "-print('one')" in diff.diff and "+print('two')" in diff.diff
    with pytest.raises(NotFound, match=r"no file 'missing\.py'"):
        browse.read_file(remote, "missing.py")
    for bad in ("../etc/passwd", "/etc/passwd", "-n"):
        with pytest.raises(InvalidInput):
            browse.read_file(remote, bad)
    with pytest.raises(InvalidInput):
        browse.commit(remote, "HEAD; rm -rf /")
    with pytest.raises(NotFound):
        browse.commit(remote, "0" * 40)


def test_browse_an_empty_repository(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    remote = LocalRemote(str(repo))
    listing = browse.tree(remote)
    assert (listing.branch, listing.head, listing.files) == ("main", None, [])
    assert browse.log(remote, 10, {}) == []
