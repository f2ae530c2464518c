"""The run sandbox's bookkeeping on the host: streaming, limits the agent enforces
itself (wall time, output, disk, file size), produced files, refusals, diagnostics.

The jail here is a process group and the launcher runs the command directly: the
real bubblewrap-in-a-cgroup sandbox (memory, pids, CPU, isolation) is driven in a real
artifacts VM by ``tests/vm/test_artifacts.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from guest_agent.protocol.runs import (
    Language,
    LimitName,
    RunEventKind,
    RunLimits,
    RunOutcome,
    RunRequest,
    RunResult,
    SourceFile,
)
from guest_agent.sandbox import toolchains
from guest_agent.sandbox.cgroups import ProcessGroupJail, available_mib
from guest_agent.sandbox.runner import (
    KEEP_RUNS,
    Sandbox,
    SandboxBusy,
    SandboxError,
)
from tests.fakes import plain_launcher


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path, ProcessGroupJail(), plain_launcher)


def _request(code: str, run_id: str = "r1", **limits: object) -> RunRequest:
    return RunRequest(run_id=run_id, language=Language.PYTHON, entry="main.py",
                      files=[SourceFile(path="main.py", content=code)],
                      limits=RunLimits(**limits))  # type: ignore[arg-type]


def _run(sandbox: Sandbox, request: RunRequest) -> tuple[list[tuple[str, str]], RunResult]:
    events = list(sandbox.start(request))
    assert events[0].kind is RunEventKind.STARTED and events[0].data == request.run_id
    assert events[-1].kind is RunEventKind.RESULT and events[-1].result is not None
    output = [(e.kind.value, e.data or "") for e in events
              if e.kind in (RunEventKind.STDOUT, RunEventKind.STDERR)]
    return output, events[-1].result


def test_output_streams_in_order_and_the_result_counts_it(sandbox: Sandbox) -> None:
    code = ("import sys, time\nprint('one', flush=True)\ntime.sleep(0.3)\n"
            "print('oops', file=sys.stderr, flush=True)\nprint('two')\nsys.exit(3)\n")
    output, result = _run(sandbox, _request(code))
    assert "".join(d for k, d in output if k == "stdout") == "one\ntwo\n"
    assert "".join(d for k, d in output if k == "stderr") == "oops\n"
    assert result.outcome is RunOutcome.FAILED and result.exit_code == 3
    assert result.stdout_bytes == 8 and result.stderr_bytes == 5 and not result.truncated


def test_stdin_and_arguments_reach_the_program(sandbox: Sandbox) -> None:
    request = _request("import sys\nprint(sys.argv[1:], sys.stdin.read().upper())\n")
    request = request.model_copy(update={"args": ["a", "b c"], "stdin": "hello"})
    output, result = _run(sandbox, request)
    assert "".join(data for _, data in output) == "['a', 'b c'] HELLO\n"
    assert result.outcome is RunOutcome.OK


def test_an_infinite_loop_is_stopped_by_wall_time(sandbox: Sandbox) -> None:
    started = time.monotonic()
    _, result = _run(sandbox, _request("while True: pass\n", wall_s=0.5))
    assert result.outcome is RunOutcome.LIMIT and result.limit is LimitName.WALL_TIME
    assert result.signal == "SIGKILL"
    assert time.monotonic() - started < 5


def test_endless_output_is_cut_at_the_limit_and_the_run_killed(sandbox: Sandbox) -> None:
    _, result = _run(sandbox, _request("while True: print('x' * 1000)\n", output_bytes=10_000))
    assert result.limit is LimitName.OUTPUT and result.truncated
    assert result.stdout_bytes == 10_000


def test_filling_the_disk_is_stopped(sandbox: Sandbox) -> None:
    code = ("i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 2**20)\n    i += 1\n")
    _, result = _run(sandbox, _request(code, disk_mib=8, wall_s=20))
    assert result.limit is LimitName.DISK


def test_produced_files_are_listed_and_can_be_fetched(sandbox: Sandbox) -> None:
    code = "import os\nos.mkdir('out')\nopen('out/data.csv', 'w').write('a,b\\n1,2\\n')\n"
    _, result = _run(sandbox, _request(code))
    assert [(f.path, f.size) for f in result.files] == [("out/data.csv", 8)]
    assert sandbox.produced_file("r1", "out/data.csv").read_text() == "a,b\n1,2\n"
    with pytest.raises(FileNotFoundError):
        sandbox.produced_file("r1", "../../etc/passwd")


def test_refusals_come_before_any_event(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match=r"entry 'other\.py'"):
        sandbox.start(_request("").model_copy(update={"entry": "other.py"}))
    _run(sandbox, _request("pass", run_id="same"))
    with pytest.raises(SandboxError, match="exists already"):
        sandbox.start(_request("pass", run_id="same"))
    for bad in ("../x.py", "/etc/passwd", "a/../../b", "-rf", "a//b", "./x", "a/"):
        with pytest.raises(ValueError, match="should match pattern"):
            SourceFile(path=bad, content="")
    for good in ("x.py", "src/main.rs", ".env", "..data/x", "a/.hidden"):
        assert SourceFile(path=good, content="").path == good
    with pytest.raises(ValueError, match="run id"):
        _request("pass", run_id="Bad/Id")


def test_concurrent_runs_are_bounded_and_slots_come_back(sandbox: Sandbox) -> None:
    first = sandbox.start(_request("pass", run_id="a"))
    second = sandbox.start(_request("pass", run_id="b"))
    with pytest.raises(SandboxBusy):
        sandbox.start(_request("pass", run_id="c"))
    list(first)
    second.close()  # a client that went away: its slot comes back too
    _run(sandbox, _request("pass", run_id="d"))


def test_old_run_folders_are_pruned(sandbox: Sandbox) -> None:
    for i in range(KEEP_RUNS + 3):
        _run(sandbox, _request("pass", run_id=f"n{i}"))
    assert len(list(sandbox.runs_dir.iterdir())) == KEEP_RUNS


def test_a_sandbox_failure_is_a_result_not_a_crash(tmp_path: Path) -> None:
    broken = Sandbox(tmp_path, ProcessGroupJail(), lambda *_: ["/nonexistent/launcher"])
    _, result = _run(broken, _request("pass"))
    assert result.outcome is RunOutcome.ERROR and "nonexistent" in (result.error or "")


def test_compiler_diagnostics_are_parsed() -> None:
    gcc = ("/work/main.c: In function 'main':\n"
           "/work/main.c:3:5: error: 'x' undeclared (first use in this function)\n"
           "/work/main.c:3:5: note: each undeclared identifier is reported only once\n")
    assert [(d.file, d.line, d.column, d.message) for d in toolchains.parse_gcc(gcc)] == [
        ("main.c", 3, 5, "'x' undeclared (first use in this function)")]
    rust = ("error[E0425]: cannot find value `y` in this scope\n --> main.rs:2:20\n  |\n"
            "error: aborting due to previous error\n")
    assert [(d.file, d.line, d.message) for d in toolchains.parse_rustc(rust)] == [
        ("main.rs", 2, "cannot find value `y` in this scope")]
    go = "# command-line-arguments\n./main.go:4:2: undefined: fmt.Printx\n"
    assert [(d.file, d.line, d.column) for d in toolchains.parse_go(go)] == [("main.go", 4, 2)]


def test_the_memory_runs_may_share_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1000000 kB\nMemAvailable:     524288 kB\n")
    assert available_mib(meminfo) == 512
