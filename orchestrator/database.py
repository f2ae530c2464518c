"""The host's one SQLite file: its engine, opened once, with the schema brought up to date.

Every store (VMs, the swap ledger, errors, projects, dev sessions) shares the
engine that :func:`open_database` returns; the composition root opens it. The
schema is :mod:`orchestrator.migrations`' job, never ``create_all``.
"""

from __future__ import annotations

import contextlib
import os
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
    engine = create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


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
