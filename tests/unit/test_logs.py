"""The host log file: lines land in SOMNUS_HOME/logs, one handler however often set up, rotation."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.logs import BACKUPS, configure_logging


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """configure_logging changes the process's root logger: put it back for the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.handlers.RotatingFileHandler)]


def test_a_line_lands_in_the_file(settings: Settings, capfd: pytest.CaptureFixture[str]) -> None:
    path = configure_logging(settings, "settle")
    assert path == settings.home / "logs" / "somnus.log"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    logging.getLogger("orchestrator.settle").info("settle: vm-a -> saved")
    logging.getLogger("orchestrator.settle").debug("not at INFO: left out")
    line = path.read_text().splitlines()[-1]
    assert f" settle[{os.getpid()}] INFO orchestrator.settle: settle: vm-a -> saved" in line
    assert line[:4].isdigit()  # the time comes first
    assert "left out" not in path.read_text()
    assert capfd.readouterr().err == ""  # the file only: stderr is the CLI's one error line


def test_twice_is_one_handler(settings: Settings) -> None:
    first = configure_logging(settings, "cli")
    assert configure_logging(settings, "cli") == first
    assert len(ours()) == 1
    logging.getLogger("cli").warning("once")
    assert first.read_text().count("once") == 1


def test_a_full_file_rotates(settings: Settings) -> None:
    path = configure_logging(settings, "cli", max_bytes=300)
    log = logging.getLogger("cli")
    for i in range(200):
        log.info("line %03d %s", i, "x" * 40)
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["somnus.log"] + [f"somnus.log.{n}" for n in range(1, BACKUPS + 1)]
    assert all(p.stat().st_size <= 300 for p in path.parent.iterdir())
    assert "line 199" in path.read_text()


def test_an_unusable_home_raises_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        configure_logging(Settings(home=tmp_path / "file" / "home"), "cli")
    assert ours() == []


def test_the_cli_runs_without_a_writable_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main  # the whole CLI: imported here so the module's other tests stay light

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SOMNUS_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setattr("sys.argv", ["somnus", "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    captured = capsys.readouterr()
    assert "Usage" in captured.out and captured.err == ""


def test_the_redaction_filter_keeps_secrets_out_of_the_file(settings: Settings) -> None:
    from guest_agent.protocol.redaction import RedactingFilter

    path = configure_logging(settings, "cli", filters=[RedactingFilter()])
    configure_logging(settings, "cli", filters=[RedactingFilter()])  # still one filter
    assert len(ours()[0].filters) == 1
    key = "ghp_" + "a1B2c3D4" * 4 + "e5F6"
    logging.getLogger("cli").info("pushing with %s to the remote", key)
    text = path.read_text()
    assert key not in text and "pushing with [REDACTED:github_token] to the remote" in text
