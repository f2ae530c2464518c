"""Projects in the orchestrator's SQLite file: one row per project, one per owned commit.

The commit table is what makes undo safe (aider's guard): only commits whose
hashes Somnus recorded here may be undone, and it survives restarts.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete
from sqlmodel import Field, SQLModel, col, select

from core.errors import NotFound
from orchestrator.models import utcnow
from orchestrator.store import SQLiteStore


class SourceKind(StrEnum):
    """Where a project's repository came from."""

    EMPTY = "empty"
    REPO = "repo"
    SESSION = "session"


class CommitKind(StrEnum):
    AI = "ai"  # a code change the model made (one dev session event)
    UNDO = "undo"  # Somnus reverting an AI commit at the user's request


class ProjectRow(SQLModel, table=True):
    __tablename__ = "projects"

    name: str = Field(primary_key=True)
    vm_name: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)
    last_used: datetime = Field(default_factory=utcnow)
    archived: bool = False
    archived_at: datetime | None = None
    source_kind: SourceKind = SourceKind.EMPTY
    source: str = ""  # repository URL or path, or dev session id
    branch: str = "main"
    # What the next chat turn in this project must tell the model (e.g. an undo).
    pending_note: str | None = None


class ProjectCommitRow(SQLModel, table=True):
    __tablename__ = "project_commits"

    id: int | None = Field(default=None, primary_key=True)
    project: str = Field(index=True)
    sha: str = Field(index=True)
    kind: CommitKind
    subject: str = ""
    reverts: str | None = None  # for undo commits: the AI commit they revert
    dev_session_id: str | None = None
    event_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


TABLES = [ProjectRow.__table__, ProjectCommitRow.__table__]  # type: ignore[attr-defined]


class ProjectStore(SQLiteStore):
    """Typed access to the project tables; one short transaction per call."""

    def add(self, row: ProjectRow) -> ProjectRow:
        with self.session() as db:
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    def find(self, name: str) -> ProjectRow | None:
        with self.session() as db:
            return db.get(ProjectRow, name)

    def get(self, name: str) -> ProjectRow:
        row = self.find(name)
        if row is None:
            raise NotFound(f"no project named '{name}' (see 'somnus project list')")
        return row

    def list_projects(self) -> list[ProjectRow]:
        with self.session() as db:
            return list(db.exec(select(ProjectRow).order_by(col(ProjectRow.name))))

    def update(self, name: str, **fields: object) -> ProjectRow:
        with self.session() as db:
            row = db.get_one(ProjectRow, name)
            for key, value in fields.items():
                setattr(row, key, value)
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    def touch(self, name: str) -> None:
        self.update(name, last_used=utcnow())

    def take_note(self, vm_name: str) -> str | None:
        """The pending note of the project living in ``vm_name``, cleared as it is read."""
        with self.session() as db:
            row = db.exec(select(ProjectRow).where(ProjectRow.vm_name == vm_name)).first()
            if row is None or not row.pending_note:
                return None
            note, row.pending_note = row.pending_note, None
            db.add(row)
            db.commit()
            return note

    def delete(self, name: str) -> None:
        """The project row and its commit records."""
        with self.session() as db:
            db.exec(delete(ProjectCommitRow).where(col(ProjectCommitRow.project) == name))
            db.exec(delete(ProjectRow).where(col(ProjectRow.name) == name))
            db.commit()

    def add_commits(self, rows: list[ProjectCommitRow]) -> None:
        with self.session() as db:
            db.add_all(rows)
            db.commit()

    def commits(self, project: str) -> list[ProjectCommitRow]:
        """The commits Somnus made in the project, oldest first."""
        with self.session() as db:
            query = select(ProjectCommitRow).where(ProjectCommitRow.project == project)
            return list(db.exec(query.order_by(col(ProjectCommitRow.id))))
