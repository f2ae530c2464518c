"""Collaborations in the orchestrator's SQLite file: one row each, the transcript as an
append-only table of entries, and each agent VM's inbox of findings to deliver.

A turn's entry and the findings it sends to the other agents' inboxes are written in
one transaction, and so are a turn's delivery marks: a killed orchestrator loses at
most the turn in flight, which a resume takes again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import UniqueConstraint, func
from sqlmodel import Field, SQLModel, col, select

from core.errors import NotFound
from guest_agent.protocol.collab import Finding
from orchestrator.collab.models import (
    CollabLimits,
    CollabStatus,
    EndReason,
    EntryKind,
    Placement,
    Team,
    TranscriptEntry,
)
from orchestrator.store import SQLiteStore


class CollabRow(SQLModel, table=True):
    __tablename__ = "collabs"

    id: str = Field(primary_key=True)
    task: str
    status: CollabStatus
    team_json: str
    limits_json: str
    placement: Placement
    policy: str
    vms_json: str = "{}"  # role -> VM, once placed
    end_reason: EndReason | None = None
    final_answer: str | None = None
    error: str | None = None
    cancel_requested: bool = False
    created_at: float
    updated_at: float

    @property
    def team(self) -> Team:
        return Team.model_validate_json(self.team_json)

    @property
    def limits(self) -> CollabLimits:
        return CollabLimits.model_validate_json(self.limits_json)


class CollabEntryRow(SQLModel, table=True):
    __tablename__ = "collab_entries"
    __table_args__ = (UniqueConstraint("collab_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    collab_id: str = Field(index=True)
    seq: int
    kind: EntryKind
    body_json: str  # the TranscriptEntry


class CollabInboxRow(SQLModel, table=True):
    __tablename__ = "collab_inbox"

    id: int | None = Field(default=None, primary_key=True)
    vm: str = Field(index=True)
    collab_id: str
    turn: int
    from_role: str
    content: str
    delivered_at: float | None = None


class CollabStore(SQLiteStore):
    """Typed access to the collaboration tables; one short transaction per call."""

    def add(self, row: CollabRow) -> CollabRow:
        with self.session() as db:
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    def find(self, collab_id: str) -> CollabRow | None:
        with self.session() as db:
            return db.get(CollabRow, collab_id)

    def get(self, collab_id: str) -> CollabRow:
        row = self.find(collab_id)
        if row is None:
            raise NotFound(f"no collaboration '{collab_id}' (see 'somnus collab list')")
        return row

    def all(self) -> list[CollabRow]:
        with self.session() as db:
            return list(db.exec(select(CollabRow).order_by(col(CollabRow.created_at).desc())))

    def update(self, collab_id: str, **fields: object) -> CollabRow:
        with self.session() as db:
            row = db.get(CollabRow, collab_id)
            if row is None:
                raise NotFound(f"no collaboration '{collab_id}'")
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = time.time()
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    # -- the transcript ---------------------------------------------------------------------

    def entries(self, collab_id: str, after: int = 0) -> list[TranscriptEntry]:
        with self.session() as db:
            rows = db.exec(select(CollabEntryRow)
                           .where(CollabEntryRow.collab_id == collab_id,
                                  CollabEntryRow.seq > after)
                           .order_by(col(CollabEntryRow.seq)))
            return [TranscriptEntry.model_validate_json(r.body_json) for r in rows]

    def next_seq(self, collab_id: str) -> int:
        with self.session() as db:
            last = db.exec(select(func.max(CollabEntryRow.seq))
                           .where(CollabEntryRow.collab_id == collab_id)).one()
            return (last or 0) + 1

    def append(self, collab_id: str, entry: TranscriptEntry,
               send: Sequence[tuple[str, Finding]] = (), delivered: Sequence[int] = ()
               ) -> TranscriptEntry:
        """Append ``entry``; in the same transaction queue ``send`` (VM, finding) and mark
        the inbox rows ``delivered``."""
        now = time.time()
        with self.session() as db:
            db.add(CollabEntryRow(collab_id=collab_id, seq=entry.seq, kind=entry.kind,
                                  body_json=entry.model_dump_json()))
            for vm, finding in send:
                db.add(CollabInboxRow(vm=vm, collab_id=finding.collab_id, turn=finding.turn,
                                      from_role=finding.from_role, content=finding.content))
            for row_id in delivered:
                inbox = db.get(CollabInboxRow, row_id)
                if inbox is not None:
                    inbox.delivered_at = now
                    db.add(inbox)
            row = db.get(CollabRow, collab_id)
            if row is not None:
                row.updated_at = now
                db.add(row)
            db.commit()
        return entry

    # -- the inboxes ------------------------------------------------------------------------

    def inbox(self, vm: str, limit: int = 200) -> list[tuple[int, Finding]]:
        """Findings not yet delivered to ``vm``, oldest first, with their row ids."""
        with self.session() as db:
            rows = db.exec(select(CollabInboxRow)
                           .where(CollabInboxRow.vm == vm,
                                  col(CollabInboxRow.delivered_at).is_(None))
                           .order_by(col(CollabInboxRow.id)).limit(limit))
            return [(r.id or 0, Finding(collab_id=r.collab_id, turn=r.turn,
                                        from_role=r.from_role, content=r.content))
                    for r in rows]
