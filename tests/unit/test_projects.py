"""Projects on libvirt's test driver: tables, ssh-config, gc, archive and the service flows.

The project VM's repository is a host folder (``LocalRemote``); the agent is
unreachable, so memory is reported as failed, which is itself under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from core.config import Settings
from core.errors import AlreadyExists, Conflict, NotFound
from guest_agent.protocol import Subsystem
from images.catalog import ImageManifest
from orchestrator.database import open_database
from orchestrator.devsessions import DevSessionManager, DevSessionStatus
from orchestrator.host import Host
from orchestrator.models import VMState, utcnow
from orchestrator.projects import (
    CommitKind,
    ProjectCommitRow,
    ProjectRow,
    ProjectService,
    ProjectStore,
    compact_overlay,
    plan_gc,
    render_entry,
)
from orchestrator.projects.housekeeping import TEMP_PREFIX
from orchestrator.ssh import SSHTarget
from orchestrator.vms import VMService
from tests.fakes import StandInAgents
from tests.unit.test_projects_git import LocalRemote, fence, git


def test_project_rows_and_owned_commits_persist(settings: Settings) -> None:
    engine, other = open_database(settings.db_path), open_database(settings.db_path)
    try:
        check_rows_persist(ProjectStore(engine), ProjectStore(other))
    finally:
        engine.dispose()
        other.dispose()


def check_rows_persist(store: ProjectStore, again: ProjectStore) -> None:
    store.add(ProjectRow(name="demo", vm_name="demo", source="/src/demo"))
    store.add_commits([ProjectCommitRow(project="demo", sha=c * 40, kind=CommitKind.AI,
                                        subject=f"Add {c}") for c in "abc"])
    store.update("demo", pending_note="undone: x")

    # ``again`` has its own engine on the file: a new process sees the same.
    row = again.get("demo")
    assert (row.vm_name, row.source, row.archived, row.branch) == ("demo", "/src/demo", False,
                                                                   "main")
    assert [c.sha[0] for c in again.commits("demo")] == ["a", "b", "c"]
    assert again.commits("demo")[0].kind is CommitKind.AI
    assert again.take_note("demo") == "undone: x"
    assert again.take_note("demo") is None  # delivered once
    again.delete("demo")
    assert again.find("demo") is None and again.commits("demo") == []
    with pytest.raises(NotFound, match="no project named 'demo'"):
        again.get("demo")


def test_ssh_config_entry_is_what_openssh_reads(tmp_path: Path) -> None:
    key = tmp_path / "my keys" / "id_ed25519"
    target = SSHTarget(port=44123, user="somnus", key_path=key,
                       known_hosts=tmp_path / "known_hosts")
    entry = render_entry("demo", target)
    assert entry.splitlines()[0] == "Host somnus-demo"
    assert "    StrictHostKeyChecking yes\n" in entry
    config = tmp_path / "config"
    config.write_text(entry)
    resolved = subprocess.run(["ssh", "-G", "-F", str(config), "somnus-demo"],
                              capture_output=True, text=True, check=True).stdout
    options = dict(line.split(" ", 1) for line in resolved.splitlines())
    assert options["hostname"] == "127.0.0.1" and options["port"] == "44123"
    assert options["user"] == "somnus" and options["stricthostkeychecking"] == "true"
    assert options["identityfile"] == str(key)
    assert options["userknownhostsfile"] == str(tmp_path / "known_hosts")


def test_gc_plan(tmp_path: Path) -> None:
    now = utcnow()
    old = now - timedelta(days=40)
    rows = [
        ProjectRow(name="orphan", vm_name="orphan"),
        ProjectRow(name="stale", vm_name="stale", archived=True, last_used=old),
        ProjectRow(name="recent", vm_name="recent", archived=True, last_used=now),
        ProjectRow(name="busy", vm_name="busy", last_used=old),  # old but not archived
    ]
    temp = tmp_path / "tmp"
    temp.mkdir()
    for name in (f"{TEMP_PREFIX}dead", f"{TEMP_PREFIX}live", "other"):
        (temp / name).mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(temp / f"{TEMP_PREFIX}dead", (two_hours_ago, two_hours_ago))
    os.utime(temp / "other", (two_hours_ago, two_hours_ago))
    vms = {"stale", "recent", "busy"}

    plan = plan_gc(rows, vms, temp, now, timedelta(days=30))
    assert plan.orphan_records == ["orphan"]
    assert plan.expired == ["stale"]
    assert plan.stale_temp == [temp / f"{TEMP_PREFIX}dead"]
    assert plan_gc(rows, vms, temp, now, None).expired == []  # archives go only when asked
    assert plan_gc(rows[1:], vms, tmp_path / "none", now, None).empty


def test_gc_plan_skips_a_temp_folder_removed_while_it_lists(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent command's scratch folder may vanish between listing and stat."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    gone = temp / f"{TEMP_PREFIX}finished"
    monkeypatch.setattr(Path, "iterdir", lambda self: iter([gone]))
    assert plan_gc([], set(), temp, utcnow(), None).empty


def test_compaction_keeps_the_backing_file_and_the_data(tmp_path: Path) -> None:
    base, overlay = tmp_path / "base.qcow2", tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x11 0 8M", str(base)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(overlay)], check=True)
    for cmd in ("write -P 0x22 0 4M", "write -P 0x33 16M 8M", "write -z 16M 8M"):
        subprocess.run(["qemu-io", "-c", cmd, str(overlay)], check=True, capture_output=True)
    reference = tmp_path / "reference.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(reference)],
                   check=True)

    before, after = compact_overlay(overlay)
    assert after <= before
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(base)
    assert oct(overlay.stat().st_mode & 0o777) == "0o600"
    subprocess.run(["qemu-img", "compare", "-q", str(reference), str(overlay)], check=True)
    assert not list(tmp_path.glob("*.compact"))


# -- the service on the test driver ---------------------------------------------------------


@pytest.fixture
def sessions(host: Host) -> DevSessionManager:
    return host.sessions()


@pytest.fixture
def projects(host: Host, sessions: DevSessionManager, agents: StandInAgents,
             tmp_path: Path) -> ProjectService:
    agents.break_all()  # the agent is unreachable (see the module docstring)
    return ProjectService(host.vms, host.swap, host.project_store, sessions, memory_wait_s=0,
                          remote=lambda r: LocalRemote(str(tmp_path / "guests" / r.name)))


def repo_of(tmp_path: Path, name: str) -> Path:
    return tmp_path / "guests" / name


def session_with_code(sessions: DevSessionManager, title: str, path: str) -> UUID:
    sid = sessions.create_session("ann", title=title).dev_session_id
    sessions.record_turn(sid, f"write {path}", fence(path, "v = 1\n"))
    sessions.record_turn(sid, f"bump {path}", fence(path, "v = 2\n"))
    return sid


def test_promote_into_a_project_vm_and_then_another_session_on_top(
        service: VMService, projects: ProjectService, sessions: DevSessionManager,
        tmp_path: Path) -> None:
    service.create("demo", Subsystem.PROJECT, wait=False)
    first = session_with_code(sessions, "one", "one.py")
    result = projects.promote(first, "demo")
    assert result.created and len(result.commits) == 2  # a new project on an adopted VM
    repo = repo_of(tmp_path, "demo")
    assert git(repo, "log", "--format=%H", "--reverse").split() == result.commits
    session = sessions.get_session(first)
    assert session.status is DevSessionStatus.PROMOTED
    assert session.promoted_to_project_id == "demo"
    # The agent is unreachable here: memory is best effort and says what did not move.
    assert result.memory.wanted == 4 and result.memory.stored == 0
    assert "0/4 memories stored; 4 failed" in result.memory.line()

    with pytest.raises(Conflict, match="is already promoted into project 'demo'"):
        projects.promote(first, "demo")

    second = session_with_code(sessions, "two", "two.py")
    more = projects.promote(second, "demo")
    assert git(repo, "log", "--format=%H", "--reverse").split() == result.commits + more.commits
    assert (repo / "one.py").read_text() == "v = 2\n" and (repo / "two.py").read_text() == "v = 2\n"
    assert git(repo, "status", "--porcelain") == ""
    owned = projects.store.commits("demo")
    assert [c.sha for c in owned] == result.commits + more.commits
    assert owned[0].dev_session_id == str(first) and owned[0].subject == "Add one.py"
    (view,) = projects.list_projects()
    assert (view.row.source_kind, view.ai_commits, view.vm_state) == ("session", 4, "running")


def test_promote_refusals(service: VMService, projects: ProjectService,
                          sessions: DevSessionManager) -> None:
    empty = sessions.create_session("ann").dev_session_id
    with pytest.raises(Conflict, match="has no code yet"):
        projects.promote(empty, "demo")
    service.create("chat", Subsystem.CHAT, wait=False)
    sid = session_with_code(sessions, "s", "a.py")
    with pytest.raises(AlreadyExists, match="is a chat VM, not a project"):
        projects.promote(sid, "chat")
    assert projects.list_projects() == []
    assert sessions.get_session(sid).status is DevSessionStatus.ACTIVE


def test_promote_refuses_uncommitted_work_in_the_project(
        service: VMService, projects: ProjectService, sessions: DevSessionManager,
        tmp_path: Path) -> None:
    service.create("demo", Subsystem.PROJECT, wait=False)
    projects.promote(session_with_code(sessions, "one", "one.py"), "demo")
    (repo_of(tmp_path, "demo") / "one.py").write_text("mine\n")
    sid = session_with_code(sessions, "two", "two.py")
    with pytest.raises(Conflict, match=r"uncommitted changes \(one.py\)"):
        projects.promote(sid, "demo")
    assert sessions.get_session(sid).status is DevSessionStatus.ACTIVE


def test_undo_through_the_service_leaves_a_note_for_the_next_turn(
        service: VMService, projects: ProjectService, sessions: DevSessionManager,
        tmp_path: Path) -> None:
    service.create("demo", Subsystem.PROJECT, wait=False)
    promoted = projects.promote(session_with_code(sessions, "one", "one.py"), "demo")
    result = projects.undo("demo")
    assert result.undone.sha == promoted.commits[-1]
    assert (repo_of(tmp_path, "demo") / "one.py").read_text() == "v = 1\n"
    kinds = [(c.kind, c.reverts) for c in projects.store.commits("demo")]
    assert kinds[-1] == (CommitKind.UNDO, promoted.commits[-1])
    assert result.memory.wanted == 1  # the system_event memory (the agent is unreachable)
    projects.undo("demo")
    note = projects.store.take_note("demo")
    assert note is not None and note.count("the user undid the AI commit") == 2
    with pytest.raises(Conflict, match="no AI commit is left"):
        projects.undo("demo")


def test_archive_compacts_and_restore_brings_it_back(
        service: VMService, projects: ProjectService, sessions: DevSessionManager,
        image: object) -> None:
    service.create("demo", Subsystem.PROJECT, wait=False)
    projects.promote(session_with_code(sessions, "one", "one.py"), "demo")
    result = projects.archive("demo")
    assert result.compacted
    assert service.store.get_vm("demo").state is VMState.STOPPED
    assert projects.get("demo").archived
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(service.paths("demo").overlay)],
        capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"].endswith("disk.qcow2")
    for refused in (lambda: projects.undo("demo"), lambda: projects.archive("demo"),
                    lambda: projects.ssh_argv("demo")):
        with pytest.raises(Conflict, match="is archived"):
            refused()
    projects.restore("demo", start=False)
    assert not projects.get("demo").archived
    with pytest.raises(Conflict, match="not archived"):
        projects.restore("demo")


def test_gc_removes_orphans_and_old_archives(service: VMService, projects: ProjectService,
                                             sessions: DevSessionManager) -> None:
    service.create("old", Subsystem.PROJECT, wait=False)
    projects.promote(session_with_code(sessions, "one", "one.py"), "old")
    projects.archive("old")
    projects.store.update("old", last_used=utcnow() - timedelta(days=90))
    projects.store.add(ProjectRow(name="ghost", vm_name="ghost"))

    dry = projects.gc(dry_run=True, older_than_days=30)
    assert (dry.orphan_records, dry.expired) == (["ghost"], ["old"])
    assert projects.store.find("ghost") is not None  # a dry run touches nothing
    projects.gc(older_than_days=30)
    assert projects.list_projects() == []
    assert service.store.find_vm("old") is None
    assert projects.gc().empty


def test_ssh_config_and_info_for_a_project(service: VMService, projects: ProjectService,
                                           sessions: DevSessionManager) -> None:
    record, _ = service.create("demo", Subsystem.PROJECT, wait=False)
    projects.promote(session_with_code(sessions, "one", "one.py"), "demo")
    text = projects.ssh_config()
    assert text.startswith("Host somnus-demo\n") and f"    Port {record.ssh_port}\n" in text
    assert str(service.paths("demo").known_hosts) in text
    info = projects.info("demo")
    assert info.vm is not None and len(info.commits) == 2
    argv = projects.ssh_argv("demo", ["git", "status"])
    assert argv[-4:] == ["cd /home/somnus/project", "&&", "git", "status"]
    assert projects.ssh_argv("demo")[1] == "-t"
    projects.delete("demo")
    assert service.store.find_vm("demo") is None and projects.ssh_config() == ""


def test_cli_lists_reports_and_refuses_in_one_line(
        settings: Settings, sessions: DevSessionManager, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], fresh_cli_host: None) -> None:
    import sys

    from cli import main

    for key, value in (("HOME", settings.home), ("LIBVIRT_URI", settings.libvirt_uri),
                       ("DOMAIN_PREFIX", settings.domain_prefix)):
        monkeypatch.setenv(f"SOMNUS_{key}", str(value))

    def somnus(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["somnus", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    assert somnus("project", "list")[1].startswith("no projects yet")
    code, out, _ = somnus("project", "gc", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["orphan_records"] == []
    code, _, err = somnus("project", "info", "nope")
    assert code == 3 and err.strip() == "error: no project named 'nope' (see 'somnus project list')"
    sid = sessions.create_session("ann").dev_session_id
    code, _, err = somnus("session", "promote", str(sid)[:8], "--project", "demo")
    assert code == 5 and "has no code yet" in err and len(err.strip().splitlines()) == 1


def test_cli_create_from_a_missing_repository_says_which_and_why(
        settings: Settings, image: ImageManifest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fresh_cli_host: None) -> None:
    """The clone's own reason, on one line (GitPython's wrapping of git's stderr once left
    the reason empty: "cannot clone '/nonexistent': ")."""
    import sys

    from cli import main

    for key, value in (("HOME", settings.home), ("CACHE", settings.cache),
                       ("LIBVIRT_URI", settings.libvirt_uri),
                       ("DOMAIN_PREFIX", settings.domain_prefix)):
        monkeypatch.setenv(f"SOMNUS_{key}", str(value))
    missing = tmp_path / "nonexistent"
    monkeypatch.setattr(sys, "argv", ["somnus", "project", "create", "demo", "--repo",
                                      str(missing)])
    with pytest.raises(SystemExit) as exited:
        main()
    _, err = capsys.readouterr()
    assert exited.value.code == 2  # InvalidInput
    assert err.strip() == (f"error: cannot clone '{missing}': "
                           f"repository '{missing}' does not exist")
