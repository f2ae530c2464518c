"""Projects in a real VM: a repo imported, a session promoted, undo, ssh, archive and restore.

One project VM serves the whole module (TCG boots are slow); tests run in file
order on it and the fixture deletes it at the end. Memory is checked by listing
it, never through a chat answer: inference under TCG is too slow for tests.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from core.config import Settings
from guest_agent.protocol import MemoryRecord, MemoryType
from images.catalog import ImageManifest
from orchestrator.host import Host
from orchestrator.projects import REPO_DIR
from orchestrator.vms import VMService
from tests.browser import screenshot as save_view
from tests.browser import visible, wait_for
from tests.vm.conftest import AppServer
from tests.vm.test_chat import somnus

pytestmark = pytest.mark.vm

PROJECT = "proj"
README = "# Tally\n\nTally counts the marmots on the Zugspitze every spring.\n"


def git_in_vm(service: VMService, *args: str) -> str:
    result = service.run(PROJECT, shlex.join(["git", "-C", REPO_DIR, "-c", "core.quotepath=off",
                                              *args]))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def memories(service: VMService, memory_type: MemoryType) -> list[MemoryRecord]:
    agent = service.agent(service.store.get_vm(PROJECT))
    return agent.memory_list(limit=200, memory_type=memory_type).memories


@pytest.fixture(scope="module")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tally")
    (repo / "README.md").write_text(README)
    (repo / "tally.py").write_text("def count(seen):\n    return len(seen)\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=Ann", "-c", "user.email=ann@example.org", "commit", "-qm",
                  "Start tally"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    return repo


@pytest.fixture(scope="module")
def project(vm_env: dict[str, str], host: Host, settings: Settings,
            image: ImageManifest, source_repo: Path) -> Iterator[dict[str, object]]:
    """The module's one project VM, created from the local repository through the CLI."""
    try:
        created = somnus(vm_env, "project", "create", PROJECT, "--repo", str(source_repo),
                         "--json")
        assert created.returncode == 0, created.stderr
        yield json.loads(created.stdout)
    finally:
        projects = host.projects()
        if projects.store.find(PROJECT) is not None:
            projects.delete(PROJECT)


@pytest.fixture(scope="module")
def session_id(host: Host) -> UUID:
    """A dev session with several revisions of two files, one of them a rollback."""
    m = host.sessions()
    sid = m.create_session("ann", title="marmots").dev_session_id
    for prompt, path, body in [
        ("write a counter", "count.py", "def count(xs):\n    return len(xs)\n"),
        ("ignore None", "count.py", "def count(xs):\n    return sum(x is not None for x in xs)\n"),
        ("add a report", "report.py", "from count import count\nprint(count([1, None]))\n"),
        ("make it fancy", "count.py", "def count(xs):\n    raise NotImplementedError\n"),
    ]:
        m.record_turn(sid, prompt, f"Here:\n```python {path}\n{body}```\n")
    m.rollback_code_block(sid, m.resolve_block_id(sid, "count.py"), 2)
    return sid


def test_create_imports_the_repo_and_stores_its_readme(
        project: dict[str, object], service: VMService, source_repo: Path) -> None:
    assert project["files"] == 2 and project["source_kind"] == "repo"
    assert project["memory"]["failed"] == []  # type: ignore[index]
    assert git_in_vm(service, "log", "--format=%s").splitlines() == ["Start tally"]
    assert service.run(PROJECT, f"cat {REPO_DIR}/README.md").stdout == README
    readme = [m for m in memories(service, MemoryType.DOCUMENT) if "readme" in m.tags]
    assert len(readme) == 1 and "marmots on the Zugspitze" in readme[0].content
    summaries = [m for m in memories(service, MemoryType.DOCUMENT) if "file-summary" in m.tags]
    assert summaries and "tally.py" in summaries[0].content


def test_promote_turns_the_session_into_commits_in_order(
        project: dict[str, object], host: Host, vm_env: dict[str, str],
        session_id: UUID) -> None:
    service = host.vms
    plan = host.sessions().commit_plan(session_id)
    promoted = somnus(vm_env, "session", "promote", str(session_id)[:8], "--project", PROJECT,
                      "--json")
    assert promoted.returncode == 0, promoted.stderr
    result = json.loads(promoted.stdout)
    assert not result["created"] and len(result["commits"]) == len(plan) == 5
    assert result["memory"]["failed"] == []

    log = git_in_vm(service, "log", "--reverse", "--format=%H%x09%an%x09%s").splitlines()
    assert log[0].endswith("Start tally")
    assert [ln.split("\t") for ln in log[1:]] == [
        [sha, "Somnus AI", step.message.split("\n")[0]]
        for sha, step in zip(result["commits"], plan, strict=True)]
    body = git_in_vm(service, "log", "-1", "--skip=1", "--format=%B")
    assert "Prompt:\nmake it fancy" in body  # the prompt that caused the change
    for path, content in plan[-1].files.items():
        assert service.run(PROJECT, f"cat {REPO_DIR}/{path}").stdout == content
    clean = somnus(vm_env, "project", "ssh", PROJECT, "--", "git", "status", "--porcelain")
    assert clean.returncode == 0 and clean.stdout == "", clean.stderr

    session = host.sessions().get_session(session_id)
    assert session.status == "promoted" and session.promoted_to_project_id == PROJECT
    assert any("make it fancy" in m.content for m in memories(service, MemoryType.DEV_SESSION))
    code = memories(service, MemoryType.CODE_SNIPPET)
    assert {m.metadata["path"] for m in code} == {"count.py", "report.py"}


def test_undo_reverts_the_last_ai_commit_as_a_new_commit(
        project: dict[str, object], service: VMService, vm_env: dict[str, str]) -> None:
    before = git_in_vm(service, "rev-list", "--count", "HEAD").strip()
    undone = somnus(vm_env, "project", "undo", PROJECT, "--json")
    assert undone.returncode == 0, undone.stderr
    result = json.loads(undone.stdout)
    assert result["undone"]["subject"] == "Roll back count.py to version 2"
    assert int(git_in_vm(service, "rev-list", "--count", "HEAD")) == int(before) + 1
    assert git_in_vm(service, "rev-parse", "HEAD").strip() == result["commit"]
    assert git_in_vm(service, "log", "-1", "--format=%an %s").startswith('Somnus AI Undo "Roll')
    assert "NotImplementedError" in service.run(PROJECT, f"cat {REPO_DIR}/count.py").stdout
    assert git_in_vm(service, "status", "--porcelain") == ""
    notes = memories(service, MemoryType.SYSTEM_EVENT)
    assert any(result["undone"]["sha"][:8] in m.content for m in notes)


def test_undo_refuses_a_commit_made_by_hand(project: dict[str, object], service: VMService,
                                            vm_env: dict[str, str]) -> None:
    made = service.run(PROJECT, f"cd {REPO_DIR} && echo hi > mine.txt && git add mine.txt && "
                                "git -c user.name=Ann -c user.email=a@b commit -qm mine")
    assert made.exit_code == 0, made.stderr
    refused = somnus(vm_env, "project", "undo", PROJECT)
    assert refused.returncode == 5 and "was not made by Somnus AI" in refused.stderr


def test_plain_ssh_with_the_generated_config(project: dict[str, object], vm_env: dict[str, str],
                                              tmp_path: Path) -> None:
    config = somnus(vm_env, "project", "ssh-config", PROJECT)
    assert config.returncode == 0 and config.stdout.startswith(f"Host somnus-{PROJECT}\n")
    (tmp_path / "config").write_text(config.stdout)
    plain = subprocess.run(["ssh", "-F", str(tmp_path / "config"), "-o", "BatchMode=yes",
                            f"somnus-{PROJECT}", "git", "-C", REPO_DIR, "log", "-1",
                            "--format=%s"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and plain.stdout.strip() == "mine", plain.stderr


def test_the_app_browses_the_repository_in_the_vm(
        project: dict[str, object], host: Host, service: VMService,
        app_page: WebDriver, app_server: AppServer) -> None:
    host.swap.activate(PROJECT)  # the view reads the repository only with its VM in front
    ai_commit = git_in_vm(service, "log", "-1", "--skip=1", "--format=%H").strip()
    page = app_page
    page.get(f"{app_server.base}/#/projects/{PROJECT}")
    ssh_line = visible(page, "#project-ssh").get_attribute("value")
    assert ssh_line.startswith("ssh -t ") and f"cd {REPO_DIR}" in ssh_line
    wait_for(page, lambda d: d.find_elements(
        By.CSS_SELECTOR, "#project-tree button[data-path='count.py']"), 120, "the tree")
    paths = {b.get_attribute("data-path") for b in
             page.find_elements(By.CSS_SELECTOR, "#project-tree button[data-path]")}
    assert {"README.md", "tally.py", "count.py", "report.py", "mine.txt"} <= paths
    page.find_element(By.CSS_SELECTOR, "#project-tree button[data-path='README.md']").click()
    wait_for(page, lambda d: "marmots on the Zugspitze" in d.find_element(
        By.ID, "project-file").text, 60, "the file at HEAD")
    commit = visible(page, f"#project-log button[data-sha='{ai_commit}']")
    assert "Roll back count.py" in commit.text
    commit.click()
    wait_for(page, lambda d: "+++ b/count.py" in d.find_element(By.ID, "project-diff").text,
             60, "the commit's diff")
    save_view(page, "vm-project")


def test_archive_compacts_and_restore_boots_with_the_repo_intact(
        project: dict[str, object], service: VMService, vm_env: dict[str, str]) -> None:
    head = git_in_vm(service, "rev-parse", "HEAD")
    archived = somnus(vm_env, "project", "archive", PROJECT)
    assert archived.returncode == 0 and "archived; disk" in archived.stdout, archived.stderr
    listed = json.loads(somnus(vm_env, "project", "list", "--json").stdout)
    assert [(p["name"], p["archived"], p["vm_state"]) for p in listed] == [
        (PROJECT, True, "stopped")]
    assert somnus(vm_env, "project", "undo", PROJECT).returncode == 5  # archived: refused
    restored = somnus(vm_env, "project", "restore", PROJECT)
    assert restored.returncode == 0, restored.stderr
    assert git_in_vm(service, "rev-parse", "HEAD") == head
    assert git_in_vm(service, "status", "--porcelain") == ""
