"""The host's one SQLite file: its engine, opened once, with the schema brought up to date.

Every store (VMs, the swap ledger, errors, projects, dev sessions) shares the
engine that :func:`open_database` returns; the composition root opens it. The
schema is :mod:`orchestrator.migrations`' job, never ``create_all``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import create_engine

from orchestrator.migrations import migrate


def sqlite_engine(db_path: Path) -> Engine:
    """One SQLite file, WAL, waits on a busy lock.

    WAL with synchronous=NORMAL keeps each commit cheap (no fsync per transaction)
    while a crash still loses nothing committed before the last checkpoint.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{db_path}", connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        _wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


BUSY_TIMEOUT_S = 30.0


def _wal(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL (it stays so). While another process switches a new file at
    the same moment, SQLite answers 'locked' at once instead of waiting for its busy
    timeout (measured: 2 in 200 four-way races), so this waits itself."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def open_database(db_path: Path) -> Engine:
    """The engine over ``db_path``, its schema migrated to current, the file private (0600)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Made private before SQLite opens it: SQLite gives the -wal and -shm files the
    # database's mode, and the WAL holds rows too. Only when it does not exist yet:
    # closing any descriptor of an open database drops every POSIX lock SQLite holds on
    # it in this process (another Host here, say), and then another process may
    # checkpoint and delete the WAL under it, losing commits.
    if not db_path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    engine = sqlite_engine(db_path)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    # A database from before this was made with the umask's mode: tighten it and its WAL.
    for path in (db_path, db_path.with_name(db_path.name + "-wal"),
                 db_path.with_name(db_path.name + "-shm")):
        if path.exists():
            os.chmod(path, 0o600)
    return engine
