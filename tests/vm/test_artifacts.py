"""The artifacts VM for real: every language's Hello World and failure, each sandbox
limit stopping a misbehaving program (and the next run working), isolation from the
agent, the VM and the host, produced files and recorded logs, and the CLI.

One artifacts VM (the ``artifacts`` image flavour) is shared by the whole file.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from core.config import Settings
from core.errors import Conflict, NotFound
from guest_agent.protocol import Subsystem
from guest_agent.protocol.runs import (
    Language,
    LimitName,
    RunEvent,
    RunEventKind,
    RunOutcome,
    RunResult,
    SourceFile,
    WebMode,
)
from images.builder import build_image
from images.recipe import Flavour
from orchestrator.artifacts.export import ExportFormat
from orchestrator.artifacts.service import ArtifactService
from orchestrator.artifacts.tables import ArtifactKind
from orchestrator.host import Host
from orchestrator.models import VMState
from orchestrator.swap import Tier
from tests.browser import screenshot as save_view
from tests.browser import visible, wait_for
from tests.vm.cli import somnus
from tests.vm.conftest import VM_NAME, AppServer

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
        # The tests here move the shared chat VM out of the foreground (a project VM comes
        # and goes); the modules after this one expect it running, as they found it.
        if host.store.find_vm(VM_NAME) is not None:
            host.swap.activate(VM_NAME)


def stdout(events: Iterator[RunEvent]) -> str:
    """A run's standard output, joined (a print may arrive in several chunks)."""
    return "".join(e.data or "" for e in events if e.kind is RunEventKind.STDOUT)


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
    assert stdout(artifacts.run("report")) == "v2\n"
    assert stdout(artifacts.run("report", version=1, stdin="x")) == "wrote report.csv\n"


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


CHART_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sales</title></head>
<body style="margin:0;background:#fff">
<canvas id="chart" width="800" height="600"></canvas>
<script>
fetch("data.csv").then(r => r.text()).then(text => {
  const rows = text.trim().split("\\n").slice(1).map(line => line.split(","));
  const ctx = document.getElementById("chart").getContext("2d");
  const top = Math.max(...rows.map(r => Number(r[1])));
  rows.forEach((r, i) => {
    const h = 500 * Number(r[1]) / top;
    ctx.fillStyle = "#d62728";
    ctx.fillRect(60 + i * 240, 550 - h, 160, h);
  });
  document.title = "drawn";
});
</script></body></html>
"""
CHART_CSV = "month,sales\njan,3\nfeb,7\nmar,5\n"


def bar_heights(png: Path) -> list[int]:
    """Heights in pixels of the red bars of a screenshot, left to right."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    red = [sum(1 for y in range(height) if _is_red(pixels[x, y])) for x in range(width)]
    bars: list[int] = []
    inside = False
    for count in red:
        if count and not inside:
            bars.append(count)
        inside = bool(count)
    return bars


def _is_red(rgb: object) -> bool:
    r, g, b = rgb  # type: ignore[misc]
    return abs(r - 214) < 30 and abs(g - 39) < 30 and abs(b - 40) < 30


def screenshot(url: str, dest: Path) -> Path:
    """The page as Debian's chromium renders it, headless (fetches finished first)."""
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    f"--user-data-dir={dest.parent / 'chromium-profile'}",
                    "--window-size=800,600", "--virtual-time-budget=10000",
                    f"--screenshot={dest}", url],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return dest


def test_a_web_artifact_opens_beside_the_foreground_vm_and_draws_its_chart(
    artifacts: ArtifactService, host: Host, booted_vm: str, tmp_path: Path
) -> None:
    host.swap.activate(booted_vm)
    host.swap.demote(host.store.get_vm(ART_VM), Tier.SAVED)  # it must come back by itself
    artifacts.create("sales", Language.HTML, [SourceFile(path="index.html", content=CHART_HTML),
                                              SourceFile(path="data.csv", content=CHART_CSV)])
    url, status = artifacts.open("sales")
    assert status.mode is WebMode.STATIC and url.startswith("http://127.0.0.1:")
    # Both run; the chat VM is still the foreground; the budget holds them.
    for name in (booted_vm, ART_VM):
        assert host.vms.lifecycle.current(host.store.get_vm(name)) is VMState.RUNNING
    assert host.store.foreground() == booted_vm
    assert host.lifecycle.budget().fits(0)
    assert httpx.get(url + "data.csv", timeout=30).text == CHART_CSV
    heights = bar_heights(screenshot(url, tmp_path / "chart.png"))
    assert len(heights) == 3, heights  # one bar per row of the CSV
    assert heights[1] == max(heights) and abs(heights[0] / heights[1] - 3 / 7) < 0.05
    assert abs(heights[2] / heights[1] - 5 / 7) < 0.05


SERVER_APP = """\
import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {self.path} on port {os.environ['PORT']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
"""


def test_a_web_artifact_with_its_own_server_runs_sandboxed_until_stopped(
    artifacts: ArtifactService,
) -> None:
    artifacts.create("hello-app", Language.PYTHON,
                     [SourceFile(path="app.py", content=SERVER_APP)], kind=ArtifactKind.WEB)
    url, status = artifacts.open("hello-app")
    assert status.mode is WebMode.SERVER
    answer = httpx.get(url + "greet", timeout=60)
    assert answer.text == "hello from /greet on port 8000"
    with pytest.raises(NotFound, match=r"'sales' is not the open web artifact \('hello-app' is\)"):
        artifacts.close("sales")
    stopped = artifacts.close("hello-app")
    assert stopped.run_id == status.run_id and not stopped.running
    closed = httpx.get(url, timeout=30)
    assert closed.status_code == 503 and "somnus artifact open" in closed.text
    with pytest.raises(Conflict, match="'hello-python' is a program, not a web artifact"):
        artifacts.open("hello-python")


def test_a_projects_tests_run_in_a_sandbox_on_a_copy_of_its_head(
    artifacts: ArtifactService, host: Host, tmp_path: Path
) -> None:
    source = tmp_path / "calc"
    (source / "tests").mkdir(parents=True)
    (source / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (source / "tests" / "test_calc.py").write_text(
        "import sys, os\nsys.path.insert(0, os.getcwd())\nfrom calc import add\n\n"
        "def test_adds():\n    assert add(2, 2) == 4\n\n"
        "def test_is_wrong_on_purpose():\n    assert add(2, 2) == 5\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "calc"]):
        subprocess.run(["git", "-C", str(source), *args], check=True)
    host.projects().create("calc", str(source), progress=print)
    try:
        events = list(artifacts.test_project("calc", progress=print))
        out = stdout(iter(events))
        result = events[-1].result
        assert result is not None and result.outcome is RunOutcome.FAILED, out
        assert "1 failed, 1 passed" in out and "test_is_wrong_on_purpose" in out
        (run,) = artifacts.store.runs("calc-tests")
        assert run.exit_code == 1
    finally:
        host.projects().delete("calc")


def test_the_dashboard_exported_as_one_page_draws_the_same_chart_from_disk(
    artifacts: ArtifactService, tmp_path: Path
) -> None:
    page = artifacts.export("sales", ExportFormat.HTML, tmp_path / "sales.html")
    heights = bar_heights(screenshot(page.as_uri(), tmp_path / "offline.png"))
    assert len(heights) == 3 and abs(heights[0] / heights[1] - 3 / 7) < 0.05


TICKS = "import time\nfor i in range(4):\n    print(f'tick {i}', flush=True)\n    time.sleep(1.5)\n"
OVERLAY_PAGE = "<!doctype html><title>Overlay</title><h1 id='hello'>An artifact page</h1>\n"


def test_the_app_switches_vms_streams_a_run_and_overlays_a_web_artifact(
    artifacts: ArtifactService, host: Host, booted_vm: str, app_page: WebDriver,
    app_server: AppServer
) -> None:
    host.swap.activate(booted_vm)
    artifacts.create("app-ticks", Language.PYTHON, [SourceFile(path="main.py", content=TICKS)])
    artifacts.create("app-page", Language.HTML,
                     [SourceFile(path="index.html", content=OVERLAY_PAGE)])
    page = app_page
    budget = page.find_element(By.ID, "budget-bar")
    before = wait_for(page, lambda d: budget.get_attribute("aria-valuenow"), 30,
                      "the budget bar")
    # The switcher brings the artifacts VM forward and shows the swap as it happens.
    page.find_element(By.CSS_SELECTOR, '#switcher a[data-view="artifacts"]').click()
    done = wait_for(page, lambda d: "artifacts in front" in (
        text := d.find_element(By.ID, "swap-status").text) and text, 120, "the swap")
    assert "swapped in" in done
    assert host.store.foreground() == ART_VM
    wait_for(page, lambda d: budget.get_attribute("aria-valuenow") != before, 30,
             "the budget bar to move")
    save_view(page, "vm-artifacts-swapped")
    # A run's output streams into the page while the program still runs.
    page.get(app_server.base + "/#/artifacts/app-ticks")
    visible(page, "#artifact-run").click()
    output = page.find_element(By.ID, "artifact-output")
    wait_for(page, lambda d: "tick 0" in output.text, 120, "the first line")
    assert "tick 3" not in output.text
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR,
                                             "#artifact-result [data-outcome]"), 120,
             "the result")
    result = page.find_element(By.ID, "artifact-result").text
    assert "tick 3" in output.text and "Exit code\n0" in result, result
    save_view(page, "vm-artifact-run")
    # Back to chat; a web artifact opens over the page while the chat VM keeps running.
    page.find_element(By.CSS_SELECTOR, '#switcher a[data-view="chat"]').click()
    wait_for(page, lambda d: f"{booted_vm} in front" in d.find_element(
        By.ID, "swap-status").text, 120, "the chat VM back in front")
    page.get(app_server.base + "/#/artifacts/app-page")
    visible(page, "#artifact-open").click()
    visible(page, "#overlay")
    page.switch_to.frame(page.find_element(By.ID, "overlay-frame"))
    wait_for(page, lambda d: d.find_elements(By.ID, "hello"), 60, "the artifact's page")
    assert page.find_element(By.ID, "hello").text == "An artifact page"
    page.switch_to.default_content()
    assert host.store.foreground() == booted_vm
    chat = host.store.get_vm(booted_vm)
    assert host.vms.lifecycle.current(chat) is VMState.RUNNING
    save_view(page, "vm-artifact-overlay")
    page.find_element(By.ID, "overlay-close").click()
    wait_for(page, lambda d: not d.find_element(By.ID, "overlay").is_displayed(), 10,
             "the overlay to close")
    assert visible(page, "#artifact-open").is_displayed()  # back on the view it covered
