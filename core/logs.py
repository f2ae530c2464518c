"""The host's log file: ``SOMNUS_HOME/logs/somnus.log``, rotated, for every host process.

The CLI, the API server and the detached settle worker all append to one file;
each line names its process and pid, so interleaved lines can be told apart.
Nothing here writes to stderr: the CLI's stderr is for one-line errors.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Sequence
from pathlib import Path

from core.config import Settings

# {process} is the caller's name for the process ("cli", "settle"): pids are reused.
LOG_FORMAT = "%(asctime)s {process}[%(process)d] %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 1 << 20
BACKUPS = 5
# Libraries that log every request at INFO: the file would be mostly theirs.
QUIET = ("httpx", "httpcore")


class _SomnusFileHandler(logging.handlers.RotatingFileHandler):
    """Our handler, so that a second call finds it instead of adding another."""

    def name_process(self, process: str) -> None:
        self.setFormatter(logging.Formatter(LOG_FORMAT.format(process=process.replace("%", "%%"))))

    def handleError(self, record: logging.LogRecord) -> None:
        # A full disk or a removed folder loses the line; logging's default would
        # print a traceback to stderr, into the middle of the CLI's output.
        pass


def log_path(settings: Settings) -> Path:
    return settings.home / "logs" / "somnus.log"


def configure_logging(settings: Settings, process: str, max_bytes: int = MAX_BYTES,
                      filters: Sequence[logging.Filter] = ()) -> Path:
    """Send this process's logging (INFO and up) to the host log file; return its path.

    ``filters`` see every line before it is written (the callers pass the secret
    redaction, which lives with the guest protocol, where ``core`` may not look).
    Idempotent: a second call keeps the one handler (re-pointed if the home changed).
    Raises ``OSError`` when the folder cannot be made or the file not opened; the
    caller decides whether that matters.
    """
    path = log_path(settings)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _SomnusFileHandler)]:
        if handler.baseFilename == os.path.abspath(path):
            handler.name_process(process)
            _add_filters(handler, filters)
            return path
        root.removeHandler(handler)
        handler.close()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o777 != 0o700:  # made before, or under another umask
        path.parent.chmod(0o700)
    handler = _SomnusFileHandler(path, maxBytes=max_bytes, backupCount=BACKUPS, encoding="utf-8")
    handler.name_process(process)
    _add_filters(handler, filters)
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in QUIET:
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
    return path


def _add_filters(handler: logging.Handler, filters: Sequence[logging.Filter]) -> None:
    for new in filters:
        if not any(type(f) is type(new) for f in handler.filters):
            handler.addFilter(new)
