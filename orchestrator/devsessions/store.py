"""Persistence of dev sessions in SQLite, one transaction per change.

A change is written through a :class:`SessionWriter`. It opens with an UPDATE of
the session row, which takes SQLite's write lock, and then checks that the newest
event is still the one the caller saw. So two processes (the chat service and a
CLI command, say) cannot interleave edits of one session; the later one gets a
``Conflict`` and can retry on fresh state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from core.errors import Conflict, NotFound
from guest_agent.protocol.redaction import redact
from orchestrator.devsessions.models import (
    MAX_EVENT_CONTENT,
    BlockVersion,
    CodeBlock,
    DevSession,
    DevSessionEvent,
    DevSessionEventType,
    DevSessionHeader,
    DevSessionStatus,
    utcnow,
)
from orchestrator.devsessions.tables import (
    CodeBlockRow,
    CodeBlockVersionRow,
    DevSessionEventRow,
    DevSessionRow,
)
from orchestrator.store import SQLiteStore


class SessionWriter:
    """One atomic change to one session; :meth:`result` is the session after it."""

    def __init__(self, db: Session, session: DevSession, now: datetime) -> None:
        self._db = db
        self.session = session
        self.now = now
        self.events: list[DevSessionEvent] = []
        self.blocks: dict[UUID, CodeBlock] = dict(session.code_blocks)
        self.fields: dict[str, Any] = {}

    def event(self, event_type: DevSessionEventType, content: str = "",
              metadata: dict[str, Any] | None = None,
              target_block_id: UUID | None = None) -> DevSessionEvent:
        """Append an event; its id is assigned at once so later events can refer to it.

        Secrets are redacted from ``content`` (the log outlives the chat it came from);
        what was taken out is noted in the metadata under ``redacted``. Code blocks are
        the user's own files and are stored as given.
        """
        content, redaction = redact(content)
        content = content[:MAX_EVENT_CONTENT]  # a marker may be longer than its secret
        metadata = dict(metadata or {})
        if redaction.kinds:
            metadata["redacted"] = redaction.kinds
        row = DevSessionEventRow(dev_session_id=self.session.dev_session_id, timestamp=self.now,
                                 event_type=event_type, content=content, meta=metadata,
                                 target_block_id=target_block_id)
        self._db.add(row)
        self._db.flush()
        event = _event(row)
        self.events.append(event)
        return event

    def save_block(self, block: CodeBlock, event_id: int) -> None:
        """Store ``block`` as a new version (the block's first one creates the block)."""
        if block.version == 1:
            self._db.add(CodeBlockRow(block_id=block.block_id,
                                      dev_session_id=self.session.dev_session_id,
                                      language=block.language, filename=block.filename,
                                      created_at=block.created_at, created_event_id=event_id))
        self._db.add(CodeBlockVersionRow(block_id=block.block_id,
                                         dev_session_id=self.session.dev_session_id,
                                         version=block.version, content=block.content,
                                         created_at=block.last_modified, event_id=event_id))
        self.blocks[block.block_id] = block

    def update(self, **fields: Any) -> None:
        """Change header fields (status, title, end_time, …) of the session."""
        self.fields.update(fields)

    def result(self) -> DevSession:
        if not self.events:
            return self.session
        return self.session.model_copy(update={
            **self.fields, "last_activity": self.now,
            "event_log": [*self.session.event_log, *self.events], "code_blocks": self.blocks,
        })


class DevSessionStore(SQLiteStore):
    """Typed access to the dev session tables."""

    def create(self, header: DevSessionHeader, metadata: dict[str, Any]) -> DevSession:
        """Insert a new session with its ``session_start`` event."""
        with self.session() as db:
            db.add(DevSessionRow.model_validate(header))
            writer = SessionWriter(db, DevSession.model_validate(header.model_dump()),
                                   header.start_time)
            writer.event(DevSessionEventType.SESSION_START, header.title, metadata)
            db.commit()
        return writer.result()

    @contextmanager
    def write(self, session: DevSession) -> Iterator[SessionWriter]:
        """A writer for one change; committed when the block ends, unless it recorded nothing."""
        sid = session.dev_session_id
        now = utcnow()
        with self.session() as db:
            touched = db.exec(update(DevSessionRow)
                              .where(col(DevSessionRow.dev_session_id) == sid)
                              .values(last_activity=now))
            if touched.rowcount == 0:
                raise NotFound(f"no dev session {sid}")
            if self._last_event_id(db, sid) != session.last_event_id:
                raise Conflict(f"dev session {str(sid)[:8]} was changed meanwhile; try again")
            writer = SessionWriter(db, session, now)
            yield writer
            if not writer.events:
                db.rollback()
                return
            if writer.fields:
                row = db.get_one(DevSessionRow, sid)
                for name, value in writer.fields.items():
                    setattr(row, name, value)
                db.add(row)
            db.commit()

    def load(self, session_id: UUID) -> DevSession | None:
        with self.session() as db:
            row = db.get(DevSessionRow, session_id)
            if row is None:
                return None
            events = db.exec(select(DevSessionEventRow)
                             .where(DevSessionEventRow.dev_session_id == session_id)
                             .order_by(col(DevSessionEventRow.id)))
            blocks = db.exec(select(CodeBlockRow)
                             .where(CodeBlockRow.dev_session_id == session_id)
                             .order_by(col(CodeBlockRow.created_event_id)))
            latest = {v.block_id: v for v in self._latest_versions(db, session_id)}
            return DevSession.model_validate({
                **row.model_dump(),
                "event_log": [_event(e) for e in events],
                "code_blocks": {b.block_id: _block(b, latest[b.block_id]) for b in blocks},
            })

    def last_event_id(self, session_id: UUID) -> int | None:
        """The newest event's id, which changes with every change: a cheap freshness stamp."""
        with self.session() as db:
            return self._last_event_id(db, session_id)

    def list_sessions(self, user_id: str | None = None,
                      status: DevSessionStatus | None = None) -> list[DevSessionHeader]:
        query = select(DevSessionRow)
        if user_id is not None:
            query = query.where(DevSessionRow.user_id == user_id)
        if status is not None:
            query = query.where(DevSessionRow.status == status)
        with self.session() as db:
            rows = db.exec(query.order_by(col(DevSessionRow.start_time).desc()))
            return [DevSessionHeader.model_validate(row.model_dump()) for row in rows]

    def session_ids(self) -> list[UUID]:
        with self.session() as db:
            return list(db.exec(select(DevSessionRow.dev_session_id)))

    def version(self, block_id: UUID, version: int) -> BlockVersion | None:
        with self.session() as db:
            row = db.exec(select(CodeBlockVersionRow)
                          .where(CodeBlockVersionRow.block_id == block_id,
                                 CodeBlockVersionRow.version == version)).first()
            return _version(row) if row else None

    def history(self, session_id: UUID) -> list[BlockVersion]:
        """Every version of every block of a session, in the order they were made."""
        with self.session() as db:
            rows = db.exec(select(CodeBlockVersionRow)
                           .where(CodeBlockVersionRow.dev_session_id == session_id)
                           .order_by(col(CodeBlockVersionRow.event_id)))
            return [_version(row) for row in rows]

    @staticmethod
    def _last_event_id(db: Session, session_id: UUID) -> int | None:
        return db.exec(select(func.max(DevSessionEventRow.id))
                       .where(DevSessionEventRow.dev_session_id == session_id)).one()

    @staticmethod
    def _latest_versions(db: Session, session_id: UUID) -> list[CodeBlockVersionRow]:
        newest = (select(CodeBlockVersionRow.block_id,
                         func.max(CodeBlockVersionRow.version).label("version"))
                  .where(CodeBlockVersionRow.dev_session_id == session_id)
                  .group_by(col(CodeBlockVersionRow.block_id)).subquery())
        return list(db.exec(select(CodeBlockVersionRow).join(
            newest, (col(CodeBlockVersionRow.block_id) == newest.c.block_id)
            & (col(CodeBlockVersionRow.version) == newest.c.version))))


def _event(row: DevSessionEventRow) -> DevSessionEvent:
    assert row.id is not None  # flushed or loaded rows always have one
    return DevSessionEvent(event_id=row.id, timestamp=row.timestamp, event_type=row.event_type,
                           content=row.content, metadata=row.meta,
                           target_block_id=row.target_block_id)


def _block(row: CodeBlockRow, latest: CodeBlockVersionRow) -> CodeBlock:
    return CodeBlock(block_id=row.block_id, language=row.language, filename=row.filename,
                     content=latest.content, version=latest.version, created_at=row.created_at,
                     last_modified=latest.created_at)


def _version(row: CodeBlockVersionRow) -> BlockVersion:
    return BlockVersion(block_id=row.block_id, version=row.version, content=row.content,
                        created_at=row.created_at, event_id=row.event_id)
