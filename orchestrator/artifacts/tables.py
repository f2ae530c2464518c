"""Artifacts in the orchestrator's SQLite file: each artifact, every version, every run.

An artifact's versions are never rewritten (the dev sessions' rule): a change is a
new version. A run's output and produced files live on disk beside the database
(``ArtifactService.run_dir``); its row keeps the outcome and the result.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import UniqueConstraint, delete
from sqlmodel import Field, SQLModel, col, select

from core.errors import NotFound
from guest_agent.protocol.runs import Language, LimitName, RunOutcome, SourceFile
from orchestrator.models import utcnow
from orchestrator.store import SQLiteStore


class ArtifactKind(StrEnum):
    PROGRAM = "program"
    WEB = "web"
    DOCUMENT = "document"
    DATA = "data"


class ArtifactStatus(StrEnum):
    """The original design's artifact states (not every one is reached yet)."""

    CREATED = "created"
    VALIDATING = "validating"
    VALIDATED = "validated"
    EXECUTING = "executing"
    COMPLETED = "completed"
    ERROR = "error"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifacts"

    name: str = Field(primary_key=True)
    kind: ArtifactKind = ArtifactKind.PROGRAM
    language: Language
    entry: str
    status: ArtifactStatus = ArtifactStatus.CREATED
    latest_version: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ArtifactVersionRow(SQLModel, table=True):
    __tablename__ = "artifact_versions"
    __table_args__ = (UniqueConstraint("artifact", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    artifact: str = Field(index=True)
    number: int
    files: str  # JSON list of guest_agent.protocol.runs.SourceFile
    message: str = ""
    created_at: datetime = Field(default_factory=utcnow)

    def sources(self) -> list[SourceFile]:
        from pydantic import TypeAdapter

        return TypeAdapter(list[SourceFile]).validate_json(self.files)


class ArtifactRunRow(SQLModel, table=True):
    __tablename__ = "artifact_runs"

    id: str = Field(primary_key=True)
    artifact: str = Field(index=True)
    version: int
    vm_name: str
    outcome: RunOutcome | None = None  # None while it runs (or if the host died meanwhile)
    limit: LimitName | None = None
    exit_code: int | None = None
    signal: str | None = None
    duration_s: float | None = None
    result: str | None = None  # JSON RunResult
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


TABLES = [ArtifactRow.__table__, ArtifactVersionRow.__table__,  # type: ignore[attr-defined]
          ArtifactRunRow.__table__]  # type: ignore[attr-defined]


class ArtifactStore(SQLiteStore):
    """Typed access to the artifact tables; one short transaction per call."""

    def find(self, name: str) -> ArtifactRow | None:
        with self.session() as db:
            return db.get(ArtifactRow, name)

    def get(self, name: str) -> ArtifactRow:
        row = self.find(name)
        if row is None:
            raise NotFound(f"no artifact named '{name}' (see 'somnus artifact list')")
        return row

    def list_artifacts(self) -> list[ArtifactRow]:
        with self.session() as db:
            return list(db.exec(select(ArtifactRow).order_by(col(ArtifactRow.name))))

    def add(self, row: ArtifactRow, first: ArtifactVersionRow) -> ArtifactRow:
        with self.session() as db:
            db.add(row)
            db.add(first)
            db.commit()
            db.refresh(row)
            return row

    def add_version(self, name: str, files: str, message: str) -> ArtifactVersionRow:
        """The next version of ``name``, numbered in the same transaction."""
        with self.session() as db:
            row = db.get_one(ArtifactRow, name)
            row.latest_version += 1
            row.updated_at = utcnow()
            version = ArtifactVersionRow(artifact=name, number=row.latest_version, files=files,
                                         message=message)
            db.add(row)
            db.add(version)
            db.commit()
            db.refresh(version)
            return version

    def version(self, name: str, number: int | None = None) -> ArtifactVersionRow:
        row = self.get(name)
        number = number or row.latest_version
        with self.session() as db:
            query = select(ArtifactVersionRow).where(ArtifactVersionRow.artifact == name,
                                                     ArtifactVersionRow.number == number)
            found = db.exec(query).first()
        if found is None:
            raise NotFound(f"artifact '{name}' has no version {number} "
                           f"(versions 1-{row.latest_version})")
        return found

    def versions(self, name: str) -> list[ArtifactVersionRow]:
        with self.session() as db:
            query = select(ArtifactVersionRow).where(ArtifactVersionRow.artifact == name)
            return list(db.exec(query.order_by(col(ArtifactVersionRow.number))))

    def set_status(self, name: str, status: ArtifactStatus) -> None:
        with self.session() as db:
            row = db.get_one(ArtifactRow, name)
            row.status = status
            db.add(row)
            db.commit()

    def save_run(self, run: ArtifactRunRow) -> ArtifactRunRow:
        with self.session() as db:
            merged = db.merge(run)
            db.commit()
            db.refresh(merged)
            return merged

    def run(self, run_id: str) -> ArtifactRunRow:
        with self.session() as db:
            found = db.get(ArtifactRunRow, run_id)
        if found is None:
            raise NotFound(f"no run '{run_id}' (see 'somnus artifact runs NAME')")
        return found

    def runs(self, name: str) -> list[ArtifactRunRow]:
        with self.session() as db:
            query = select(ArtifactRunRow).where(ArtifactRunRow.artifact == name)
            return list(db.exec(query.order_by(col(ArtifactRunRow.started_at))))

    def delete(self, name: str) -> None:
        with self.session() as db:
            for table in (ArtifactRunRow, ArtifactVersionRow):
                db.exec(delete(table).where(col(table.artifact) == name))
            db.exec(delete(ArtifactRow).where(col(ArtifactRow.name) == name))
            db.commit()
