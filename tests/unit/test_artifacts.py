"""Artifacts on the host: versions kept, entry and limits checked with one-line errors,
a run recorded (events log, produced files fetched, outcome) through the stand-in
agent, whose runner is the real one over a process group (``tests/fakes.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import Conflict, InvalidInput, NotFound
from guest_agent.protocol import Subsystem
from guest_agent.protocol.runs import Language, RunEventKind, RunOutcome, SourceFile
from orchestrator.artifacts.service import merge_limits, pick_entry, read_sources
from orchestrator.artifacts.tables import ArtifactStatus
from orchestrator.host import Host
from tests.conftest import ARTIFACTS_IMAGE


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
    with pytest.raises(InvalidInput, match=r"entry 'main\.py' is not one of the files"):
        svc.update("calc", _files(other_py=""))
    with pytest.raises(InvalidInput, match="artifact name 'Bad Name'"):
        svc.create("Bad Name", Language.PYTHON, _files(main_py=""))


def test_entry_is_picked_or_asked_for() -> None:
    assert pick_entry(Language.PYTHON, _files(tool_py="", notes_txt=""), None) == "tool.py"
    assert pick_entry(Language.C, _files(main_c="", util_c=""), None) == "main.c"
    with pytest.raises(InvalidInput, match="--entry"):
        pick_entry(Language.GO, _files(a_go="", b_go=""), None)


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


def test_running_without_an_artifacts_vm_says_how_to_make_one(host: Host) -> None:
    host.artifacts.create("job", Language.PYTHON, _files(main_py=""))
    with pytest.raises(Conflict, match="somnus vm create artifacts --subsystem artifacts"):
        list(host.artifacts.run("job"))
    assert host.artifacts.store.runs("job") == []
