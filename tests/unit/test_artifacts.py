"""Artifacts on the host: versions kept, entry and limits checked with one-line errors,
a run recorded (events log, produced files fetched, outcome) through the stand-in
agent, whose runner is the real one over a process group (``tests/fakes.py``)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from core.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from guest_agent.protocol import Subsystem
from guest_agent.protocol.runs import (
    Diagnostic,
    Language,
    LimitName,
    RunEvent,
    RunEventKind,
    RunOutcome,
    RunResult,
    SourceFile,
)
from orchestrator.artifacts.export import ExportFormat
from orchestrator.artifacts.repotests import detect_test_command
from orchestrator.artifacts.service import ArtifactService, run_summary
from orchestrator.artifacts.sources import merge_limits, pick_entry, read_sources
from orchestrator.artifacts.tables import ArtifactRunRow, ArtifactStatus
from orchestrator.host import Host
from orchestrator.projects import ProjectService
from orchestrator.projects.tables import ProjectRow
from tests.conftest import ARTIFACTS_IMAGE
from tests.fakes import agents_of
from tests.unit.conftest import AUTH, ClientFactory, chat_body
from tests.unit.test_projects_git import LocalRemote, fence


def _files(**named: str) -> list[SourceFile]:
    return [SourceFile(path=name.replace("_", "."), content=code) for name, code in named.items()]


@pytest.fixture
def art_host(host: Host) -> Host:
    """The unit host with a (test-driver) artifacts VM."""
    host.vms.create("artifacts", Subsystem.ARTIFACTS, wait=False)
    return host


def test_an_artifacts_vm_boots_the_artifacts_image(art_host: Host) -> None:
    assert art_host.vms.store.get_vm("artifacts").image_hash == ARTIFACTS_IMAGE
    art_host.vms.create("chat", Subsystem.CHAT, wait=False)
    assert art_host.vms.store.get_vm("chat").image_hash != ARTIFACTS_IMAGE


def test_versions_are_kept_and_each_can_be_read(host: Host) -> None:
    svc = host.artifacts
    svc.create("calc", Language.PYTHON, _files(main_py="print(1)\n"))
    svc.update("calc", _files(main_py="print(2)\n"), "two")
    assert [v.number for v in svc.store.versions("calc")] == [1, 2]
    assert svc.store.version("calc", 1).sources()[0].content == "print(1)\n"
    assert svc.store.version("calc").sources()[0].content == "print(2)\n"
    with pytest.raises(NotFound, match="no version 3 \\(versions 1-2\\)"):
        svc.store.version("calc", 3)
    with pytest.raises(Conflict, match="artifact update calc"):
        svc.create("calc", Language.PYTHON, _files(main_py=""))
    with pytest.raises(Conflict, match=r"entry 'main\.py' is not one of the artifact's files"):
        svc.update("calc", _files(other_py=""))
    with pytest.raises(InvalidInput, match="artifact name 'Bad Name'"):
        svc.create("Bad Name", Language.PYTHON, _files(main_py=""))


def test_entry_is_given_or_picked() -> None:
    assert pick_entry(Language.PYTHON, _files(notes_txt="", tool_py=""), None) == "tool.py"
    assert pick_entry(Language.C, _files(util_c="", main_c=""), None) == "main.c"
    assert pick_entry(Language.GO, _files(b_go="", a_go=""), None) == "a.go"
    assert pick_entry(Language.GO, _files(b_go="", a_go=""), "b.go") == "b.go"
    assert pick_entry(Language.BASH, _files(run_txt=""), None) == "run.txt"


def test_limits_are_the_languages_defaults_with_checked_overrides() -> None:
    limits = merge_limits(Language.GO, {"wall_s": 5, "memory_mib": None})
    assert (limits.wall_s, limits.memory_mib, limits.pids) == (5, 256, 128)
    with pytest.raises(InvalidInput, match=r"^limit memory_mib: "):
        merge_limits(Language.PYTHON, {"memory_mib": 1})


def test_sources_are_read_from_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "app" / "pkg").mkdir(parents=True)
    (tmp_path / "app" / "main.py").write_text("import pkg\n")
    (tmp_path / "app" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "app" / ".git").mkdir()
    (tmp_path / "app" / ".git" / "HEAD").write_text("ref")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\xff")
    files = read_sources([tmp_path / "app", tmp_path / "logo.png"])
    assert [(f.path, f.base64) for f in files] == [("main.py", False), ("pkg/__init__.py", False),
                                                   ("logo.png", True)]
    with pytest.raises(InvalidInput, match="no such file or folder"):
        read_sources([tmp_path / "missing"])


def test_a_run_is_recorded_with_its_output_and_files(art_host: Host) -> None:
    svc = art_host.artifacts
    code = ("import sys\nprint('out')\nopen('result.txt', 'w').write(sys.stdin.read())\n"
            "sys.exit(2)\n")
    svc.create("job", Language.PYTHON, _files(main_py=code))
    events = list(svc.run("job", stdin="data"))
    assert [e.kind for e in events][:2] == [RunEventKind.STARTED, RunEventKind.PHASE]
    assert "".join(e.data or "" for e in events if e.kind is RunEventKind.STDOUT) == "out\n"
    assert events[-1].kind is RunEventKind.RESULT
    (run,) = svc.store.runs("job")
    assert (run.outcome, run.exit_code, run.vm_name) == (RunOutcome.FAILED, 2, "artifacts")
    assert (svc.run_dir(run.id) / "files" / "result.txt").read_text() == "data"
    assert [e.kind for e in svc.events(run.id)] == [e.kind for e in events]
    assert svc.store.get("job").status is ArtifactStatus.ERROR
    # What ran and how it ended is a memory of the artifacts VM now.
    (memory,) = agents_of(art_host).made["artifacts"].memories
    assert memory.content.startswith(f"Run {run.id} of artifact 'job' version 1 failed (exit 2)")
    assert memory.metadata["outcome"] == "failed" and "artifact-run" in memory.tags


def test_running_without_an_artifacts_vm_says_how_to_make_one(host: Host) -> None:
    host.artifacts.create("job", Language.PYTHON, _files(main_py=""))
    with pytest.raises(Conflict, match="somnus vm create artifacts --subsystem artifacts"):
        list(host.artifacts.run("job"))
    assert host.artifacts.store.runs("job") == []


def test_exports_carry_source_produced_files_and_a_manifest(art_host: Host,
                                                            tmp_path: Path) -> None:
    svc = art_host.artifacts
    code = "open('chart.csv', 'w').write('x,y\\n1,2\\n')\n"
    logo = SourceFile(path="logo.png", content="iVBORw0=", base64=True)
    svc.create("chart", Language.PYTHON, [*_files(main_py=code), logo])
    list(svc.run("chart"))
    zipped = svc.export("chart", ExportFormat.ZIP, tmp_path / "c.zip")
    with zipfile.ZipFile(zipped) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "produced/chart.csv",
                                              "source/logo.png", "source/main.py"]
        manifest = json.loads(archive.read("manifest.json"))
        assert archive.read("source/logo.png") == base64.b64decode("iVBORw0=")
    assert (manifest["version"], manifest["last_run"]["outcome"]) == (1, "ok")
    assert manifest["files"]["produced/chart.csv"] == hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    with tarfile.open(svc.export("chart", ExportFormat.TAR, tmp_path / "c.tar.gz")) as archive:
        assert "produced/chart.csv" in archive.getnames()
    folder = svc.export("chart", ExportFormat.DIR, tmp_path / "c")
    assert (folder / "source" / "main.py").read_text() == code
    with pytest.raises(AlreadyExists, match="exists already"):
        svc.export("chart", ExportFormat.DIR, tmp_path / "c")
    # A version never run exports without produced files.
    svc.update("chart", _files(main_py="print(2)\n"))
    with zipfile.ZipFile(svc.export("chart", ExportFormat.ZIP, tmp_path / "v2.zip")) as archive:
        assert not [n for n in archive.namelist() if n.startswith("produced/")]
        assert json.loads(archive.read("manifest.json"))["last_run"] is None


@pytest.fixture
def demo_project(art_host: Host, tmp_path: Path) -> tuple[ArtifactService, ProjectService, Path]:
    """Artifacts wired to a project 'demo' whose VM's repository is a host folder."""
    art_host.vms.create("demo", Subsystem.PROJECT, wait=False)
    remote_root = tmp_path / "guests"
    projects = ProjectService(art_host.vms, art_host.swap, art_host.project_store,
                              art_host.sessions(), memory_wait_s=0,
                              remote=lambda r: LocalRemote(str(remote_root / r.name)))
    projects.store.add(ProjectRow(name="demo", vm_name="demo"))
    svc = ArtifactService(art_host.artifacts.store, art_host.vms, art_host.swap,
                          art_host.settings.home, projects=lambda: projects)
    return svc, projects, remote_root / "demo"


def test_export_into_a_project_is_an_undoable_ai_commit(
    demo_project: tuple[ArtifactService, ProjectService, Path],
) -> None:
    svc, projects, repo = demo_project
    svc.create("tool", Language.PYTHON, _files(main_py="print('tool')\n"))
    sha = svc.export_to_project("tool", "demo")
    assert (repo / "artifacts" / "tool" / "source" / "main.py").read_text() == "print('tool')\n"
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%H %an %s"], text=True,
                         capture_output=True, check=True).stdout
    assert log.strip() == f"{sha} Somnus AI artifact tool v1"
    assert [c.sha for c in projects.store.commits("demo")] == [sha]
    projects.undo("demo")
    assert not (repo / "artifacts" / "tool" / "source" / "main.py").exists()


def test_a_run_summary_names_the_error() -> None:
    run = ArtifactRunRow(id="r1", artifact="calc", version=3, vm_name="artifacts")
    crashed = RunResult(outcome=RunOutcome.FAILED, exit_code=1, duration_s=0.5)
    stderr = [RunEvent(kind=RunEventKind.STDERR, data="Traceback...\nZeroDivisionError: x\n")]
    assert run_summary(run, crashed, stderr) == (
        "Run r1 of artifact 'calc' version 3 failed (exit 1) after 0.50s. "
        "Error output ends: Traceback...\nZeroDivisionError: x")
    broken = RunResult(outcome=RunOutcome.COMPILE_ERROR, duration_s=0.0, diagnostics=[
        Diagnostic(file="main.c", line=2, message="'x' undeclared")])
    assert run_summary(run, broken, []).endswith("did not compile after 0.00s. "
                                                 "Compiler: main.c:2: 'x' undeclared")
    stopped = RunResult(outcome=RunOutcome.LIMIT, limit=LimitName.MEMORY, duration_s=2.0)
    assert "was stopped by its memory limit" in run_summary(run, stopped, [])


def test_the_test_command_is_detected_from_the_repository() -> None:
    pytest_cmd = "python3 -m pytest -q -p no:cacheprovider"
    assert detect_test_command({"src/app.py": b"", "tests/test_app.py": b""}) == pytest_cmd
    assert detect_test_command({"pyproject.toml": b"[tool.pytest.ini_options]\n"}) == pytest_cmd
    assert detect_test_command({"package.json": b'{"scripts": {"test": "node t.js"}}'}) == (
        "node t.js")
    assert detect_test_command({"Cargo.toml": b""}) == "cargo test --offline"
    assert detect_test_command({"go.mod": b"module x\n"}) == "go test ./..."
    assert detect_test_command({"Makefile": b"all:\n\ttrue\ntest: all\n\t./t\n"}) == "make test"
    with pytest.raises(InvalidInput, match="give one after --"):
        detect_test_command({"README.md": b"", "Makefile": b"all:\n"})


def test_a_projects_tests_run_on_a_copy_of_its_head(
    demo_project: tuple[ArtifactService, ProjectService, Path],
) -> None:
    svc, _, repo = demo_project
    repo.mkdir(parents=True)
    (repo / "data.txt").write_text("42\n")
    (repo / "untracked.txt").write_text("not committed")
    for args in (["init", "-q", "-b", "main"], ["add", "data.txt"],
                 ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    events = list(svc.test_project("demo", "cat data.txt; ls untracked.txt"))
    out = "".join(e.data or "" for e in events if e.kind is RunEventKind.STDOUT)
    result = events[-1].result
    assert out == "42\n" and result is not None and result.exit_code != 0  # untracked: absent
    assert [r.version for r in svc.store.runs("demo-tests")] == [1]
    list(svc.test_project("demo", "true"))  # each call is a new version, every run kept
    assert [(r.version, r.outcome) for r in svc.store.runs("demo-tests")] == [
        (1, RunOutcome.FAILED), (2, RunOutcome.OK)]


def test_an_answers_code_blocks_become_an_artifact(host: Host) -> None:
    answer = ("Here is the script:\n```python\nprint('hi')\n```\nAnd a helper:\n"
              "```python util.py\ndef f():\n    return 1\n```\nRun it with:\n"
              "```bash\npython3 main.py\n```\n")
    row = host.artifacts.from_answer(answer, "hi")
    assert row is not None and (row.language, row.entry) == (Language.PYTHON, "main.py")
    files = {f.path: f.content for f in host.artifacts.store.version("hi").sources()}
    assert files == {"main.py": "print('hi')\n", "util.py": "def f():\n    return 1\n"}
    assert host.artifacts.from_answer("No code here, only `inline`.") is None
    assert host.artifacts.from_answer("```text\nplain\n```\n") is None


def test_a_static_web_artifact_exports_as_one_page(host: Host, tmp_path: Path) -> None:
    svc = host.artifacts
    page = ('<html><head><link rel="stylesheet" href="style.css"></head><body>'
            '<script src="./app.js"></script></body></html>')
    svc.create("site", Language.HTML, [
        SourceFile(path="index.html", content=page), SourceFile(path="app.js", content="go();"),
        SourceFile(path="style.css", content="body{margin:0}"),
        SourceFile(path="data.csv", content="a,1\n")])
    html = svc.export("site", ExportFormat.HTML, tmp_path / "site.html").read_text()
    assert "<script>go();</script>" in html and "<style>body{margin:0}</style>" in html
    assert base64.b64encode(b"a,1\n").decode() in html  # served to fetch() by the shim
    assert "app.js" not in html.split("</script>", 1)[1]  # inlined, not referenced
    svc.create("prog", Language.PYTHON, _files(main_py=""))
    with pytest.raises(Conflict, match="not a static web artifact"):
        svc.export("prog", ExportFormat.HTML, tmp_path / "prog.html")


def test_a_dev_sessions_code_becomes_an_artifact(host: Host) -> None:
    sessions = host.sessions()
    sid = sessions.create_session("ann", title="tool").dev_session_id
    sessions.record_turn(sid, "write it", fence("tool.py", "print(1)\n"))
    sessions.record_turn(sid, "better", fence("tool.py", "print(2)\n"))
    row = host.artifacts.from_session(str(sid)[:8], "tool")
    assert (row.language, row.entry) == (Language.PYTHON, "tool.py")
    assert host.artifacts.store.version("tool").sources()[0].content == "print(2)\n"
    empty = sessions.create_session("ann", title="nothing").dev_session_id
    with pytest.raises(InvalidInput, match="has no code in a language Somnus runs"):
        host.artifacts.from_session(str(empty), "nothing")


def test_the_real_models_answer_becomes_an_artifact_that_runs(
    art_host: Host, make_agent_client: ClientFactory
) -> None:
    # SmolLM2 on the host, in an artifacts agent (the adaptive prompt): greedy, so the
    # answer is the same each time; in a TCG guest one such turn takes minutes.
    agent, _ = make_agent_client(Subsystem.ARTIFACTS)
    body = chat_body("Write a Python script that prints hello world. Answer with one code "
                     "block.", max_tokens=60)
    answer = agent.post("/v1/chat/completions", json=body, headers=AUTH).json()
    row = art_host.artifacts.from_answer(answer["choices"][0]["message"]["content"], "hello")
    assert row is not None and row.language is Language.PYTHON
    events = list(art_host.artifacts.run("hello"))
    assert events[-1].result is not None and events[-1].result.outcome is RunOutcome.OK
    out = "".join(e.data or "" for e in events if e.kind is RunEventKind.STDOUT)
    assert "hello world" in out.lower()
