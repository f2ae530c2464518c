"""Ordered, recorded schema migrations of the host database (after simonw/llm's migrations).

Each migration is a function of a SQLAlchemy ``Connection``, registered in order
with ``@migration``. :func:`migrate` applies those not yet recorded in the
``_somnus_migrations`` table, each in its own transaction together with its record,
so a failed migration leaves neither schema changes nor a record behind.

Migrations are history: one that has shipped is never edited (databases out there
have run it as it was); a schema change is a new migration at the end. That is
why ``m001_initial`` is frozen SQL rather than ``create_all`` of today's models.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache

from sqlalchemy import Connection, Engine

from core.errors import InvalidInput, SomnusError

__all__ = [
    "BASELINE",
    "MIGRATIONS",
    "MIGRATIONS_TABLE",
    "DatabaseTooNew",
    "Migration",
    "MigrationFailed",
    "Migrations",
    "migrate",
    "migration",
    "recorded",
]

MIGRATIONS_TABLE = "_somnus_migrations"
BASELINE = "m001_initial"

Migration = Callable[[Connection], None]


class DatabaseTooNew(InvalidInput):
    """The database records migrations this Somnus does not have."""


class MigrationFailed(SomnusError):
    """A migration raised; its transaction was rolled back."""


class Migrations:
    """An ordered registry of migrations, named by their functions (names are unique)."""

    def __init__(self, migrations: Iterable[Migration] = ()) -> None:
        self._migrations: dict[str, Migration] = {}
        for fn in migrations:
            self.register(fn)

    def register(self, fn: Migration) -> Migration:
        """Decorator: append ``fn`` as the next migration."""
        if fn.__name__ in self._migrations:
            raise ValueError(f"migration {fn.__name__} is registered twice; rename the new one")
        self._migrations[fn.__name__] = fn
        return fn

    def copy(self) -> Migrations:
        """A registry with the same migrations, to extend without touching this one."""
        return Migrations(self._migrations.values())

    @property
    def names(self) -> list[str]:
        return list(self._migrations)

    def apply(self, engine: Engine) -> list[str]:
        """Apply the migrations the database has not recorded, in order; returns their names."""
        with engine.connect() as conn:
            # A plain read first: an up-to-date database (every open but the first)
            # costs no write lock, so the CLI never waits on a busy API server here.
            done = recorded(conn)
        if done is not None:
            self._refuse_unknown(done, engine)
            if done.issuperset(self._migrations):
                return []
        with _transaction(engine) as conn:
            self._prepare(conn)
        applied: list[str] = []
        for name, fn in self._migrations.items():
            with _transaction(engine) as conn:
                # Read again under the write lock: another process may have got here first.
                done = recorded(conn) or set()
                self._refuse_unknown(done, engine)
                if name in done:
                    continue
                try:
                    fn(conn)
                except Exception as exc:
                    raise MigrationFailed(
                        f"database {_path(engine)}: migration {name} failed ({_first_line(exc)}) "
                        "and was rolled back; report this as a Somnus bug") from exc
                _record(conn, name)
            applied.append(name)
        return applied

    def _prepare(self, conn: Connection) -> None:
        """Create the migrations table; a database made before it gets the baseline marked."""
        if _has_table(conn, MIGRATIONS_TABLE):
            return
        legacy = [table for table in _baseline_columns() if _has_table(conn, table)]
        conn.exec_driver_sql(
            f"CREATE TABLE {MIGRATIONS_TABLE} (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        baseline = self._migrations.get(BASELINE)
        if legacy and baseline is not None:
            _check_legacy(conn, legacy)
            # Older Somnus made each store's tables on first use, so some may be missing;
            # the baseline only creates what does not exist and leaves every row alone.
            baseline(conn)
            _record(conn, BASELINE)

    def _refuse_unknown(self, done: set[str], engine: Engine) -> None:
        unknown = sorted(done.difference(self._migrations))
        if unknown:
            raise DatabaseTooNew(
                f"database {_path(engine)} is newer than this Somnus (it has migration "
                f"{', '.join(unknown)}); upgrade Somnus, or set SOMNUS_HOME to another directory")


MIGRATIONS = Migrations()
migration = MIGRATIONS.register


def migrate(engine: Engine, migrations: Migrations = MIGRATIONS) -> list[str]:
    """Bring the database's schema up to date; returns the names of the migrations applied."""
    return migrations.apply(engine)


def recorded(conn: Connection) -> set[str] | None:
    """The migrations the database records as applied (None: it has no migrations table)."""
    if not _has_table(conn, MIGRATIONS_TABLE):
        return None
    return {row[0] for row in conn.exec_driver_sql(f"SELECT name FROM {MIGRATIONS_TABLE}")}


# -- the machinery ------------------------------------------------------------------------


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """One ``BEGIN IMMEDIATE`` … ``COMMIT`` on one connection, rolled back on any error.

    pysqlite runs DDL outside any transaction unless left in autocommit mode and told
    where the transaction is; IMMEDIATE takes the write lock at once, so two processes
    opening the database together migrate one after the other.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            # SQLite itself ends the transaction on some errors (a full disk, say).
            if _driver(conn).in_transaction:
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


def _check_legacy(conn: Connection, tables: list[str]) -> None:
    """Refuse a pre-migration database whose tables lack columns of the baseline schema."""
    expected = _baseline_columns()
    for table in tables:
        have = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
        missing = sorted(expected[table] - have)
        if missing:
            raise InvalidInput(
                f"database {_path(conn.engine)}: table {table} lacks {', '.join(missing)}; it was "
                "made by a Somnus too old to upgrade in place: move it aside and start afresh")


@cache
def _baseline_columns() -> dict[str, frozenset[str]]:
    """Each table of the baseline schema and its columns (from m001's own SQL)."""
    db = sqlite3.connect(":memory:")
    try:
        for statement in _M001:
            db.execute(statement)
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: frozenset(row[1] for row in db.execute(f"PRAGMA table_info({t})"))
                for t in tables}
    finally:
        db.close()


def _record(conn: Connection, name: str) -> None:
    conn.exec_driver_sql(f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                         (name, datetime.now(UTC).isoformat(timespec="seconds")))


def _has_table(conn: Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.exec_driver_sql(query, (name,)).first() is not None


def _driver(conn: Connection) -> sqlite3.Connection:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _path(engine: Engine) -> str:
    return str(engine.url.database)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- the migrations, oldest first ---------------------------------------------------------

# The schema as SQLModel's create_all made it before migrations existed, verbatim
# but for IF NOT EXISTS (so it also completes a pre-migration database).
_M001 = (
    """CREATE TABLE IF NOT EXISTS vms (
    id INTEGER NOT NULL,
    name VARCHAR NOT NULL,
    domain_name VARCHAR NOT NULL,
    subsystem VARCHAR(9) NOT NULL,
    state VARCHAR(9) NOT NULL,
    memory_mib INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    accel VARCHAR NOT NULL,
    image_hash VARCHAR NOT NULL,
    vm_dir VARCHAR NOT NULL,
    ssh_port INTEGER NOT NULL,
    agent_port INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    last_error VARCHAR,
    last_active_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (domain_name),
    UNIQUE (ssh_port),
    UNIQUE (agent_port)
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ix_vms_name ON vms (name)",
    """CREATE TABLE IF NOT EXISTS vm_state_history (
    id INTEGER NOT NULL,
    vm_name VARCHAR NOT NULL,
    from_state VARCHAR(9),
    to_state VARCHAR(9) NOT NULL,
    at DATETIME NOT NULL,
    reason VARCHAR NOT NULL,
    PRIMARY KEY (id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_vm_state_history_vm_name ON vm_state_history (vm_name)",
    """CREATE TABLE IF NOT EXISTS swap_ledger (
    seq INTEGER NOT NULL,
    from_vm VARCHAR,
    to_vm VARCHAR NOT NULL,
    phase VARCHAR(11) NOT NULL,
    outcome VARCHAR(11) NOT NULL,
    started_at DATETIME NOT NULL,
    finished_at DATETIME,
    detail VARCHAR NOT NULL,
    PRIMARY KEY (seq)
)""",
    """CREATE TABLE IF NOT EXISTS system_cache (
    vm_name VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    last_prompt VARCHAR NOT NULL,
    last_answer VARCHAR NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (vm_name)
)""",
    """CREATE TABLE IF NOT EXISTS vm_errors (
    id INTEGER NOT NULL,
    vm_name VARCHAR NOT NULL,
    at DATETIME NOT NULL,
    source VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    PRIMARY KEY (id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_vm_errors_vm_name ON vm_errors (vm_name)",
    """CREATE TABLE IF NOT EXISTS dev_sessions (
    dev_session_id CHAR(32) NOT NULL,
    chat_session_id CHAR(32) NOT NULL,
    user_id VARCHAR NOT NULL,
    title VARCHAR(150) NOT NULL,
    status VARCHAR(9) NOT NULL,
    start_time DATETIME NOT NULL,
    end_time DATETIME,
    last_activity DATETIME NOT NULL,
    promoted_to_project_id VARCHAR,
    PRIMARY KEY (dev_session_id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_dev_sessions_chat_session_id ON dev_sessions (chat_session_id)",
    "CREATE INDEX IF NOT EXISTS ix_dev_sessions_user_id ON dev_sessions (user_id)",
    """CREATE TABLE IF NOT EXISTS projects (
    name VARCHAR NOT NULL,
    vm_name VARCHAR NOT NULL,
    created_at DATETIME NOT NULL,
    last_used DATETIME NOT NULL,
    archived BOOLEAN NOT NULL,
    archived_at DATETIME,
    source_kind VARCHAR(7) NOT NULL,
    source VARCHAR NOT NULL,
    branch VARCHAR NOT NULL,
    pending_note VARCHAR,
    PRIMARY KEY (name)
)""",
    "CREATE INDEX IF NOT EXISTS ix_projects_vm_name ON projects (vm_name)",
    """CREATE TABLE IF NOT EXISTS project_commits (
    id INTEGER NOT NULL,
    project VARCHAR NOT NULL,
    sha VARCHAR NOT NULL,
    kind VARCHAR(4) NOT NULL,
    subject VARCHAR NOT NULL,
    reverts VARCHAR,
    dev_session_id VARCHAR,
    event_id INTEGER,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_project_commits_sha ON project_commits (sha)",
    "CREATE INDEX IF NOT EXISTS ix_project_commits_project ON project_commits (project)",
    """CREATE TABLE IF NOT EXISTS dev_session_events (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    dev_session_id CHAR(32) NOT NULL,
    timestamp DATETIME NOT NULL,
    event_type VARCHAR(22) NOT NULL,
    content VARCHAR NOT NULL,
    metadata JSON NOT NULL,
    target_block_id CHAR(32),
    FOREIGN KEY(dev_session_id) REFERENCES dev_sessions (dev_session_id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_dev_session_events_dev_session_id "
    "ON dev_session_events (dev_session_id)",
    """CREATE TABLE IF NOT EXISTS dev_code_blocks (
    block_id CHAR(32) NOT NULL,
    dev_session_id CHAR(32) NOT NULL,
    language VARCHAR NOT NULL,
    filename VARCHAR,
    created_at DATETIME NOT NULL,
    created_event_id INTEGER NOT NULL,
    PRIMARY KEY (block_id),
    FOREIGN KEY(dev_session_id) REFERENCES dev_sessions (dev_session_id),
    FOREIGN KEY(created_event_id) REFERENCES dev_session_events (id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_dev_code_blocks_dev_session_id "
    "ON dev_code_blocks (dev_session_id)",
    """CREATE TABLE IF NOT EXISTS dev_code_block_versions (
    id INTEGER NOT NULL,
    block_id CHAR(32) NOT NULL,
    dev_session_id CHAR(32) NOT NULL,
    version INTEGER NOT NULL,
    content VARCHAR NOT NULL,
    created_at DATETIME NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (block_id, version),
    FOREIGN KEY(block_id) REFERENCES dev_code_blocks (block_id),
    UNIQUE (event_id),
    FOREIGN KEY(event_id) REFERENCES dev_session_events (id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_dev_code_block_versions_dev_session_id "
    "ON dev_code_block_versions (dev_session_id)",
    "CREATE INDEX IF NOT EXISTS ix_dev_code_block_versions_block_id "
    "ON dev_code_block_versions (block_id)",
)


@migration
def m001_initial(conn: Connection) -> None:
    """VMs, their history, the swap ledger, the system cache, errors, projects, dev sessions."""
    for statement in _M001:
        conn.exec_driver_sql(statement)


@migration
def m002_vms_domain_uuid(conn: Connection) -> None:
    """``vms.domain_uuid``: libvirt's UUID of the domain, to tell our domains from orphans."""
    # Nullable: rows older than this migration have no UUID on record.
    conn.exec_driver_sql("ALTER TABLE vms ADD COLUMN domain_uuid TEXT")


@migration
def m003_artifacts(conn: Connection) -> None:
    """Artifacts, their versions and their runs (``orchestrator.artifacts.tables``)."""
    for statement in (
        """CREATE TABLE artifacts (
    name VARCHAR NOT NULL,
    kind VARCHAR(8) NOT NULL,
    language VARCHAR(10) NOT NULL,
    entry VARCHAR NOT NULL,
    status VARCHAR(10) NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (name)
)""",
        """CREATE TABLE artifact_versions (
    id INTEGER NOT NULL,
    artifact VARCHAR NOT NULL,
    number INTEGER NOT NULL,
    files VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (artifact, number)
)""",
        "CREATE INDEX ix_artifact_versions_artifact ON artifact_versions (artifact)",
        """CREATE TABLE artifact_runs (
    id VARCHAR NOT NULL,
    artifact VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    vm_name VARCHAR NOT NULL,
    outcome VARCHAR(13),
    "limit" VARCHAR(9),
    exit_code INTEGER,
    signal VARCHAR,
    duration_s FLOAT,
    result VARCHAR,
    started_at DATETIME NOT NULL,
    finished_at DATETIME,
    PRIMARY KEY (id)
)""",
        "CREATE INDEX ix_artifact_runs_artifact ON artifact_runs (artifact)",
    ):
        conn.exec_driver_sql(statement)


@migration
def m004_vms_web_port(conn: Connection) -> None:
    """``vms.web_port``: the host port forwarded to the artifacts VM's web artifacts."""
    conn.exec_driver_sql("ALTER TABLE vms ADD COLUMN web_port INTEGER")


@migration
def m005_security(conn: Connection) -> None:
    """The security monitor: ``vms.security_hold``, its samples and its anomaly log
    (``orchestrator.security.tables``)."""
    for statement in (
        # Why the policy holds the VM (suspended or terminated); NULL: it is free to run.
        "ALTER TABLE vms ADD COLUMN security_hold TEXT",
        """CREATE TABLE security_samples (
    id INTEGER NOT NULL,
    vm_name VARCHAR NOT NULL,
    at FLOAT NOT NULL,
    metrics VARCHAR NOT NULL,
    PRIMARY KEY (id)
)""",
        "CREATE INDEX ix_security_samples_vm_name ON security_samples (vm_name)",
        """CREATE TABLE security_events (
    id INTEGER NOT NULL,
    at DATETIME NOT NULL,
    vm_name VARCHAR NOT NULL,
    kind VARCHAR(7) NOT NULL,
    level VARCHAR(8) NOT NULL,
    rule VARCHAR,
    metric VARCHAR,
    value FLOAT,
    threshold FLOAT,
    action VARCHAR,
    detail VARCHAR NOT NULL,
    evidence VARCHAR NOT NULL,
    guest_epoch FLOAT,
    guest_seq INTEGER,
    PRIMARY KEY (id)
)""",
        "CREATE INDEX ix_security_events_at ON security_events (at)",
        "CREATE INDEX ix_security_events_vm_name ON security_events (vm_name)",
    ):
        conn.exec_driver_sql(statement)


# The full-text index over research_pages (``orchestrator.research.tables`` makes the same
# for create_all): external content, so the text is stored once, in research_pages, and
# triggers keep the index in step with every insert, update and delete there.
RESEARCH_PAGES_FTS = (
    "CREATE VIRTUAL TABLE research_pages_fts USING fts5("
    "title, text, content='research_pages', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER research_pages_ai AFTER INSERT ON research_pages BEGIN "
    "INSERT INTO research_pages_fts(rowid, title, text) "
    "VALUES (new.rowid, new.title, new.text); "
    "END",
    "CREATE TRIGGER research_pages_ad AFTER DELETE ON research_pages BEGIN "
    "INSERT INTO research_pages_fts(research_pages_fts, rowid, title, text) "
    "VALUES ('delete', old.rowid, old.title, old.text); END",
    "CREATE TRIGGER research_pages_au AFTER UPDATE ON research_pages BEGIN "
    "INSERT INTO research_pages_fts(research_pages_fts, rowid, title, text) "
    "VALUES ('delete', old.rowid, old.title, old.text); "
    "INSERT INTO research_pages_fts(rowid, title, text) "
    "VALUES (new.rowid, new.title, new.text); "
    "END",
)


@migration
def m006_research(conn: Connection) -> None:
    """Research on the host (``orchestrator.research.tables``): the record of each run, the
    fetch proxy's allow-list and request log, its crawl index with an FTS5 table."""
    for statement in (
        """CREATE TABLE research_runs (
    run_id VARCHAR NOT NULL,
    vm VARCHAR NOT NULL,
    question VARCHAR NOT NULL,
    mode VARCHAR(10) NOT NULL,
    status VARCHAR(12) NOT NULL,
    stage VARCHAR(7),
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    stop_reason VARCHAR(11),
    error VARCHAR,
    view_json VARCHAR NOT NULL,
    report_json VARCHAR,
    PRIMARY KEY (run_id)
)""",
        """CREATE TABLE research_allowed_hosts (
    host VARCHAR NOT NULL,
    added_at DATETIME NOT NULL,
    PRIMARY KEY (host)
)""",
        """CREATE TABLE research_fetch_log (
    id INTEGER NOT NULL,
    at DATETIME NOT NULL,
    vm VARCHAR,
    run_id VARCHAR,
    kind VARCHAR(6) NOT NULL,
    target VARCHAR NOT NULL,
    host VARCHAR,
    allowed BOOLEAN NOT NULL,
    status INTEGER,
    bytes INTEGER NOT NULL,
    cached BOOLEAN NOT NULL,
    reason VARCHAR,
    PRIMARY KEY (id)
)""",
        "CREATE INDEX ix_research_fetch_log_run_id ON research_fetch_log (run_id)",
        """CREATE TABLE research_pages (
    url VARCHAR NOT NULL,
    host VARCHAR NOT NULL,
    title VARCHAR NOT NULL,
    text VARCHAR NOT NULL,
    fetched_at DATETIME NOT NULL,
    PRIMARY KEY (url)
)""",
        "CREATE INDEX ix_research_pages_host ON research_pages (host)",
        *RESEARCH_PAGES_FTS,
    ):
        conn.exec_driver_sql(statement)


@migration
def m007_collab(conn: Connection) -> None:
    """Multi-agent collaborations (``orchestrator.collab.tables``): one row each, the
    append-only transcript, and the agent VMs' inboxes of findings."""
    for statement in (
        """CREATE TABLE collabs (
    id VARCHAR NOT NULL,
    task VARCHAR NOT NULL,
    status VARCHAR(9) NOT NULL,
    team_json VARCHAR NOT NULL,
    limits_json VARCHAR NOT NULL,
    placement VARCHAR(8) NOT NULL,
    policy VARCHAR NOT NULL,
    vms_json VARCHAR NOT NULL,
    end_reason VARCHAR(12),
    final_answer VARCHAR,
    error VARCHAR,
    cancel_requested BOOLEAN NOT NULL,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    PRIMARY KEY (id)
)""",
        """CREATE TABLE collab_entries (
    id INTEGER NOT NULL,
    collab_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    kind VARCHAR(4) NOT NULL,
    body_json VARCHAR NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (collab_id, seq)
)""",
        "CREATE INDEX ix_collab_entries_collab_id ON collab_entries (collab_id)",
        """CREATE TABLE collab_inbox (
    id INTEGER NOT NULL,
    vm VARCHAR NOT NULL,
    collab_id VARCHAR NOT NULL,
    turn INTEGER NOT NULL,
    from_role VARCHAR NOT NULL,
    content VARCHAR NOT NULL,
    delivered_at FLOAT,
    PRIMARY KEY (id)
)""",
        "CREATE INDEX ix_collab_inbox_vm ON collab_inbox (vm)",
    ):
        conn.exec_driver_sql(statement)
