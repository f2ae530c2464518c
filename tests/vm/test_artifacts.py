"""The artifacts VM for real: every language's Hello World and failure, each sandbox
limit stopping a misbehaving program (and the next run working), isolation from the
agent, the VM and the host, produced files and recorded logs, and the CLI.

One artifacts VM (the ``artifacts`` image flavour) is shared by the whole file.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from guest_agent.protocol import Subsystem
from guest_agent.protocol.runs import (
    Language,
    LimitName,
    RunEventKind,
    RunOutcome,
    RunResult,
    SourceFile,
)
from images.builder import build_image
from images.recipe import Flavour
from orchestrator.artifacts.service import ArtifactService
from orchestrator.host import Host
from tests.vm.cli import somnus

pytestmark = pytest.mark.vm

ART_VM = "artifacts"


@pytest.fixture(scope="module")
def artifacts(host: Host, settings: Settings) -> Iterator[ArtifactService]:
    build_image(settings, progress=print, flavour=Flavour.ARTIFACTS)
    host.vms.create(ART_VM, Subsystem.ARTIFACTS, memory_mib=1024, progress=print)
    try:
        yield host.artifacts
    finally:
        host.vms.delete(ART_VM)


def _run(svc: ArtifactService, name: str, language: Language, files: dict[str, str],
         **limits: object) -> tuple[str, str, RunResult]:
    if svc.store.find(name) is None:
        svc.create(name, language, [SourceFile(path=p, content=c) for p, c in files.items()])
    out: list[str] = []
    err: list[str] = []
    result = None
    for event in svc.run(name, limits=limits):
        if event.kind is RunEventKind.STDOUT:
            out.append(event.data or "")
        elif event.kind is RunEventKind.STDERR:
            err.append(event.data or "")
        elif event.kind is RunEventKind.RESULT:
            result = event.result
    assert result is not None
    return "".join(out), "".join(err), result


HELLO: dict[Language, tuple[str, str]] = {
    Language.PYTHON: ("main.py", 'print("hello from python")\n'),
    Language.JAVASCRIPT: ("main.js", 'console.log("hello from javascript")\n'),
    Language.BASH: ("main.sh", 'echo "hello from bash"\n'),
    Language.C: ("main.c", '#include <stdio.h>\nint main(void) { puts("hello from c"); }\n'),
    Language.CPP: ("main.cpp", '#include <iostream>\n'
                   'int main() { std::cout << "hello from cpp" << std::endl; }\n'),
    Language.RUST: ("main.rs", 'fn main() {\n    println!("hello from rust");\n}\n'),
    Language.GO: ("main.go", 'package main\nimport "fmt"\n'
                  'func main() { fmt.Println("hello from go") }\n'),
}  # fmt: skip


@pytest.mark.parametrize("language", list(HELLO))
def test_hello_world_in_every_language(artifacts: ArtifactService, language: Language) -> None:
    path, code = HELLO[language]
    out, err, result = _run(artifacts, f"hello-{language}", language, {path: code})
    assert (out, result.outcome, result.exit_code) == (f"hello from {language}\n",
                                                       RunOutcome.OK, 0), err
    assert (result.compile_s is not None) == (language in {Language.C, Language.CPP,
                                                           Language.RUST, Language.GO})


RUNTIME_ERRORS: dict[Language, tuple[str, str, str]] = {
    Language.PYTHON: ("main.py", "import sys\nprint('before')\n1 / 0\n", "ZeroDivisionError"),
    Language.JAVASCRIPT: ("main.js", "console.log('before');\nthrow new Error('boom');\n",
                          "Error: boom"),
    Language.BASH: ("main.sh", "echo before\necho boom >&2\nexit 3\n", "boom"),
}
COMPILE_ERRORS: dict[Language, tuple[str, str, int]] = {
    Language.C: ("main.c", "int main(void) {\n  return x;\n}\n", 2),
    Language.CPP: ("main.cpp", "int main() {\n\n  undefined_call();\n}\n", 3),
    Language.RUST: ("main.rs", "fn main() {\n    let a = 1;\n    println!(\"{}\", b);\n}\n", 3),
    Language.GO: ("main.go", "package main\n\nfunc main() {\n\tx := 1\n}\n", 4),
}


@pytest.mark.parametrize("language", list(RUNTIME_ERRORS))
def test_a_runtime_error_fails_with_its_exit_code_and_stderr(
    artifacts: ArtifactService, language: Language
) -> None:
    path, code, message = RUNTIME_ERRORS[language]
    out, err, result = _run(artifacts, f"crash-{language}", language, {path: code})
    assert out == "before\n" and message in err
    assert result.outcome is RunOutcome.FAILED and result.exit_code not in (None, 0)


@pytest.mark.parametrize("language", list(COMPILE_ERRORS))
def test_a_compile_error_comes_back_as_diagnostics(
    artifacts: ArtifactService, language: Language
) -> None:
    path, code, line = COMPILE_ERRORS[language]
    _, err, result = _run(artifacts, f"broken-{language}", language, {path: code})
    assert result.outcome is RunOutcome.COMPILE_ERROR, err
    assert (path, line) in [(d.file, d.line) for d in result.diagnostics], err
    assert result.exit_code != 0 and result.files == []


MISBEHAVING: list[tuple[str, str, dict[str, object], LimitName]] = [
    ("loop", "while True:\n    pass\n", {"wall_s": 3}, LimitName.WALL_TIME),
    ("cpu", "import threading\ndef spin():\n    while True:\n        pass\n"
     "for _ in range(2):\n    threading.Thread(target=spin).start()\n",
     {"cpu_s": 2, "wall_s": 60}, LimitName.CPU_TIME),
    ("fork-bomb", "import os\nwhile True:\n    try:\n        os.fork()\n"
     "    except OSError:\n        pass\n", {}, LimitName.PIDS),
    ("memory-hog", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n",
     {"memory_mib": 128}, LimitName.MEMORY),
    ("output-flood", "import sys\nwhile True:\n    sys.stdout.write('x' * 1023 + '\\n')\n",
     {"output_bytes": 1_000_000}, LimitName.OUTPUT),
    ("big-file", "with open('big.bin', 'wb') as f:\n    while True:\n"
     "        f.write(bytes(2**20))\n", {"file_size_mib": 8}, LimitName.FILE_SIZE),
    ("disk-filler", "i = 0\nwhile True:\n    open(f'part{i}', 'wb').write(bytes(2**20))\n"
     "    i += 1\n", {"disk_mib": 24}, LimitName.DISK),
]  # fmt: skip


@pytest.mark.parametrize(("name", "code", "limits", "limit"), MISBEHAVING,
                         ids=[m[0] for m in MISBEHAVING])
def test_each_limit_stops_a_misbehaving_program_and_the_next_run_works(
    artifacts: ArtifactService, host: Host, name: str, code: str, limits: dict[str, object],
    limit: LimitName,
) -> None:
    agent = host.vms.agent(host.vms.store.get_vm(ART_VM))
    slowest = [0.0]
    stop = threading.Event()

    def probe() -> None:  # the agent stays responsive while the program misbehaves
        while not stop.is_set():
            started = time.monotonic()
            agent.health(timeout_s=10)
            slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.2)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        out, _, result = _run(artifacts, name, Language.PYTHON, {"main.py": code}, **limits)
    finally:
        stop.set()
        prober.join()
    assert (result.outcome, result.limit) == (RunOutcome.LIMIT, limit), result
    if limit is LimitName.OUTPUT:
        assert result.truncated and result.stdout_bytes == 1_000_000 == len(out)
    assert slowest[0] < 5, f"the agent took {slowest[0]:.1f}s to answer /health"
    out, _, after = _run(artifacts, "hello-python", Language.PYTHON, {})
    assert after.outcome is RunOutcome.OK and out == "hello from python\n"


PROBE = """\
import os, socket
for path in ("/etc/somnus/agent.json", "/var/lib/somnus-agent", "/opt/somnus", "/home"):
    print(path, os.path.exists(path))
for host, port in (("127.0.0.1", 8700), ("10.0.2.15", 8700), ("10.0.2.2", 22)):
    s = socket.socket()
    s.settimeout(3)
    try:
        print(host, port, s.connect_ex((host, port)) == 0)
    except OSError:
        print(host, port, False)
print("uid", os.getuid())
print("caps", open("/proc/self/status").read().split("CapEff:")[1].split()[0])
print("processes", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
try:
    open("/usr/evil", "w")
except OSError as exc:
    print("usr", exc.errno)
"""


def test_a_sandboxed_program_cannot_reach_the_agent_the_vm_or_the_host(
    artifacts: ArtifactService,
) -> None:
    out, err, result = _run(artifacts, "probe", Language.PYTHON, {"main.py": PROBE})
    assert result.outcome is RunOutcome.OK, err
    lines = out.splitlines()
    assert lines[:4] == ["/etc/somnus/agent.json False", "/var/lib/somnus-agent False",
                         "/opt/somnus False", "/home False"]  # the token is not even there
    assert lines[4:7] == ["127.0.0.1 8700 False", "10.0.2.15 8700 False", "10.0.2.2 22 False"]
    assert lines[7:9] == ["uid 1000", "caps 0000000000000000"]
    assert lines[9] == "processes [1, 2]"  # its own PID namespace: bwrap's init and itself
    assert lines[10] == "usr 30"  # EROFS: the system is read-only


def test_produced_files_stdin_args_and_the_recorded_run(
    artifacts: ArtifactService, settings: Settings
) -> None:
    code = ("import sys\nname = sys.stdin.read().strip()\n"
            "open('report.csv', 'w').write(f'name,args\\n{name},{\" \".join(sys.argv[1:])}\\n')\n"
            "print('wrote report.csv')\n")  # fmt: skip
    artifacts.create("report", Language.PYTHON, [SourceFile(path="main.py", content=code)])
    events = list(artifacts.run("report", stdin="somnus\n", args=["-a", "b c"]))
    result = events[-1].result
    assert result is not None and result.outcome is RunOutcome.OK
    assert [f.path for f in result.files] == ["report.csv"]
    (run,) = artifacts.store.runs("report")
    fetched = artifacts.run_dir(run.id) / "files" / "report.csv"
    assert fetched.read_text() == "name,args\nsomnus,-a b c\n"
    assert [e.kind for e in artifacts.events(run.id)] == [e.kind for e in events]
    assert (run.outcome, run.exit_code, run.version) == (RunOutcome.OK, 0, 1)
    # A new version runs the new code; the old one can still be run.
    artifacts.update("report", [SourceFile(path="main.py", content="print('v2')\n")], "v2")
    assert [e.data for e in artifacts.run("report") if e.kind is RunEventKind.STDOUT] == ["v2\n"]
    old = [e.data for e in artifacts.run("report", version=1, stdin="x")
           if e.kind is RunEventKind.STDOUT]
    assert old == ["wrote report.csv\n"]


def test_the_cli_streams_output_and_exits_with_the_outcome(
    artifacts: ArtifactService, vm_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text("import sys\nprint('to stdout')\n"
                                      "print('to stderr', file=sys.stderr)\nsys.exit(4)\n")
    created = somnus(vm_env, "artifact", "create", "cli-demo", "--lang", "python", str(tmp_path))
    assert created.returncode == 0, created.stderr
    ran = somnus(vm_env, "artifact", "run", "cli-demo")
    assert ran.returncode == 4 and ran.stdout == "to stdout\n"
    assert "to stderr" in ran.stderr and "failed: exit 4" in ran.stderr
    stopped = somnus(vm_env, "artifact", "run", "loop", "--timeout", "2")
    assert stopped.returncode == 137 and "wall_time limit" in stopped.stderr
    listed = somnus(vm_env, "artifact", "runs", "cli-demo", "--json")
    assert [run["outcome"] for run in json.loads(listed.stdout)] == ["failed"]
    missing = somnus(vm_env, "artifact", "run", "no-such-artifact")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1
    assert "no artifact named 'no-such-artifact'" in missing.stderr
