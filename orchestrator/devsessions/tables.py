"""The SQLite tables behind dev sessions (in the orchestrator's one database file).

Events and block versions are only ever inserted: history is never rewritten,
and a rollback is a new version plus an event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from orchestrator.devsessions.models import DevSessionEventType, DevSessionHeader


class DevSessionRow(DevSessionHeader, table=True):
    __tablename__ = "dev_sessions"


class DevSessionEventRow(SQLModel, table=True):
    __tablename__ = "dev_session_events"
    # AUTOINCREMENT: ids are never reused, so they stay a strict global order.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    dev_session_id: UUID = Field(foreign_key="dev_sessions.dev_session_id", index=True)
    timestamp: datetime
    event_type: DevSessionEventType
    content: str = ""
    # "metadata" is reserved on SQLAlchemy models, so the attribute is named differently.
    meta: dict[str, Any] = Field(default_factory=dict,
                                 sa_column=Column("metadata", JSON, nullable=False))
    target_block_id: UUID | None = None


class CodeBlockRow(SQLModel, table=True):
    __tablename__ = "dev_code_blocks"

    block_id: UUID = Field(primary_key=True)
    dev_session_id: UUID = Field(foreign_key="dev_sessions.dev_session_id", index=True)
    language: str
    filename: str | None = None
    created_at: datetime
    created_event_id: int = Field(foreign_key="dev_session_events.id")


class CodeBlockVersionRow(SQLModel, table=True):
    __tablename__ = "dev_code_block_versions"
    __table_args__ = (UniqueConstraint("block_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    block_id: UUID = Field(foreign_key="dev_code_blocks.block_id", index=True)
    # Denormalised so a session's whole history is one indexed query.
    dev_session_id: UUID = Field(index=True)
    version: int
    content: str
    created_at: datetime
    event_id: int = Field(foreign_key="dev_session_events.id", unique=True)


TABLES = [DevSessionRow.__table__, DevSessionEventRow.__table__, CodeBlockRow.__table__,  # type: ignore[attr-defined]
          CodeBlockVersionRow.__table__]  # type: ignore[attr-defined]
