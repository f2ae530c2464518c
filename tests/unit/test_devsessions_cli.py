"""``somnus session`` end to end through the real entry point: output, --json, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli import main
from tests.unit.test_devsessions_diffs import apply_patch

Cli = Callable[..., str]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cli_host: None) -> Path:
    monkeypatch.setenv("SOMNUS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    """Run ``somnus session ARGS`` in-process; exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["somnus", "session", *args])
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin))
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    code = exited.value.code
    return code if isinstance(code, int) else 1, captured.out, captured.err


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    def call(*args: str, stdin: str = "", expect: int = 0) -> str:
        """Stdout on success; stderr when ``expect`` is an error exit code."""
        code, out, err = run(capsys, monkeypatch, *args, stdin=stdin)
        assert code == expect, (code, out, err)
        return out if expect == 0 else err

    return call


def test_turns_show_log_and_json(cli: Cli) -> None:
    created = json.loads(cli("new", "--title", "CLI [demo]", "--user", "ann", "--json"))
    sid = created["dev_session_id"]
    assert (created["title"], created["status"], created["user_id"]) == (
        "CLI [demo]",
        "active",
        "ann",
    )
    out = cli(
        "turn",
        sid[:6],
        "--prompt",
        "start",
        "--answer-file",
        "-",
        stdin="Here:\n```python app.py\nprint(1)\n```\n",
    )
    assert out.strip() == "created app.py (python, version 1, +1 -0)"
    turn = json.loads(
        cli(
            "turn", sid, "--prompt", "more", "--json", "--answer", "```python app.py\nprint(2)\n```"
        )
    )
    assert turn["changes"][0]["block"]["version"] == 2
    shown = json.loads(cli("show", sid, "--json"))
    assert [(b["path"], b["version"], b["content"]) for b in shown["code_blocks"]] == [
        ("app.py", 2, "print(2)\n")
    ]
    assert shown["summary"]["event_count"] == 7
    log = json.loads(cli("log", sid, "--json"))
    assert [e["event_type"] for e in log] == [
        "session_start",
        "user_prompt",
        "ai_response",
        "code_block_created",
        "user_prompt",
        "ai_response",
        "code_block_modified",
    ]
    listed = json.loads(cli("list", "--json"))
    assert [s["dev_session_id"] for s in listed] == [sid]
    assert "CLI [demo]" in cli("list") and "app.py" in cli("show", sid[:8])


def test_diff_applies_and_rollback_adds_a_version(cli: Cli, tmp_path: Path) -> None:
    sid = json.loads(cli("new", "--json"))["dev_session_id"]
    cli("turn", sid, "--prompt", "p", "--answer", "```sh\necho 1\n```")
    cli(
        "turn",
        sid,
        "--prompt",
        "p",
        "--answer",
        "```sh\necho 2\necho ü\n```",
        "--target",
        "block-1.sh",
    )
    diff = cli("diff", sid, "block-1.sh")
    assert apply_patch(tmp_path, "echo 1\n", diff) == "echo 2\necho ü\n"
    assert cli("rollback", sid, "block-1.sh", "--to", "1").strip() == (
        "block-1.sh rolled back to version 1, saved as version 3 (+1 -2)"
    )
    assert cli("diff", sid, "block-1.sh", "--from", "1", "--to", "3") == ""
    assert json.loads(cli("show", sid, "--json"))["code_blocks"][0]["version"] == 3


def test_status_commands_and_refusals_have_exit_codes(cli: Cli) -> None:
    sid = json.loads(cli("new", "--json"))["dev_session_id"]
    short = sid[:8]
    assert cli("pause", short).strip() == f"dev session {short} paused"
    assert cli("pause", short, expect=5).strip() == "error: dev session is already paused"
    err = cli("turn", short, "--prompt", "p", "--answer", "a", expect=5)
    assert "resume it first" in err and len(err.strip().splitlines()) == 1
    assert "resumed" in cli("resume", short)
    assert "completed" in cli("complete", short)
    assert "archived" in cli("archive", short)
    assert "cannot become active" in cli("resume", short, expect=5)
    assert [s["status"] for s in json.loads(cli("list", "--status", "archived", "--json"))] == [
        "archived"
    ]
    assert json.loads(cli("list", "--status", "active", "--json")) == []


def test_bad_references_and_arguments(cli: Cli) -> None:
    assert "no dev session matches 'feed'" in cli("show", "feed", expect=3)
    sid = json.loads(cli("new", "--json"))["dev_session_id"]
    assert "exactly one of --answer" in cli("turn", sid, "--prompt", "p", expect=2)
    assert "no code block matches" in cli("diff", sid, "nope.py", expect=3)
    assert "cannot read" in cli("turn", sid, "--prompt", "p", "--answer-file", "/no/such", expect=2)
    assert json.loads(cli("list", "--user", "nobody", "--json")) == []


def test_installed_command_reports_errors_on_one_line(home: Path) -> None:
    env = {"SOMNUS_HOME": str(home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cli import main; main()",
            "session",
            "show",
            "0000",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.startswith("error: no dev session matches '0000'")
    assert len(done.stderr.strip().splitlines()) == 1
