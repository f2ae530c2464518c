"""The dev session data model: enums, the session, its event log and its code blocks.

Names and enum values follow the original Somnus design (``dev_session_schemas.py``),
with one addition: ``code_block_rolled_back``, so a rollback is visible as what it
is in the log, in commit messages and in what the model is told. Event ids are
integers from the append-only table, so their order is the order things happened.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID, uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict
from sqlmodel import Field, SQLModel

from core.types import utcnow

MAX_EVENT_CONTENT = 50_000
MAX_TITLE = 150
DEFAULT_TITLE = "Untitled Dev Session"



def as_utc(value: datetime) -> datetime:
    # SQLite keeps no time zone; every stored time is UTC, so naive means UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class DevSessionStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ARCHIVED = "archived"
    PROMOTED = "promoted"


class DevSessionEventType(StrEnum):
    SESSION_START = "session_start"
    SESSION_UPDATED = "session_updated"
    USER_PROMPT = "user_prompt"
    AI_RESPONSE = "ai_response"
    CODE_BLOCK_CREATED = "code_block_created"
    CODE_BLOCK_MODIFIED = "code_block_modified"
    CODE_BLOCK_ROLLED_BACK = "code_block_rolled_back"
    USER_FEEDBACK = "user_feedback"
    SESSION_PAUSED = "session_paused"
    SESSION_RESUMED = "session_resumed"
    SESSION_COMPLETED = "session_completed"
    SESSION_ARCHIVED = "session_archived"
    SESSION_PROMOTED = "session_promoted"
    TITLE_CHANGED = "title_changed"
    SNAPSHOT_CREATED = "snapshot_created"


CODE_EVENTS = frozenset({
    DevSessionEventType.CODE_BLOCK_CREATED,
    DevSessionEventType.CODE_BLOCK_MODIFIED,
    DevSessionEventType.CODE_BLOCK_ROLLED_BACK,
})


class DevSessionEvent(BaseModel):
    """One entry of the append-only log; for code events ``content`` is the diff."""

    model_config = ConfigDict(frozen=True)

    event_id: int
    timestamp: UtcDatetime
    event_type: DevSessionEventType
    content: str = Field(default="", max_length=MAX_EVENT_CONTENT)
    metadata: dict[str, Any] = Field(default_factory=dict)
    target_block_id: UUID | None = None


class CodeBlock(BaseModel):
    """A piece of code at one version; ``filename`` is None when the answer gave none."""

    model_config = ConfigDict(frozen=True)

    block_id: UUID
    language: str
    filename: str | None = None
    content: str
    version: int = Field(default=1, ge=1)
    created_at: UtcDatetime
    last_modified: UtcDatetime

    @property
    def label(self) -> str:
        """What diffs are labelled with: the file name, else the language."""
        return self.filename or self.language

    @property
    def line_count(self) -> int:
        return len(self.content.splitlines())


class BlockVersion(BaseModel):
    """One stored version of a block and the event that made it."""

    model_config = ConfigDict(frozen=True)

    block_id: UUID
    version: int
    content: str
    created_at: UtcDatetime
    event_id: int


class DevSessionHeader(SQLModel):
    """A session's own fields (one table row), without its log and blocks."""

    dev_session_id: UUID = Field(default_factory=uuid4, primary_key=True)
    chat_session_id: UUID = Field(index=True)
    user_id: str = Field(index=True, min_length=1)
    title: str = Field(default=DEFAULT_TITLE, min_length=1, max_length=MAX_TITLE)
    status: DevSessionStatus = DevSessionStatus.ACTIVE
    start_time: UtcDatetime = Field(default_factory=utcnow)
    end_time: UtcDatetime | None = None
    last_activity: UtcDatetime = Field(default_factory=utcnow)
    promoted_to_project_id: str | None = None


class LanguageStats(BaseModel):
    blocks: int
    lines: int


class SessionSummary(BaseModel):
    dev_session_id: UUID
    title: str
    status: DevSessionStatus
    duration_seconds: float
    event_count: int
    block_count: int
    languages: dict[str, LanguageStats]


class DevSession(DevSessionHeader):
    """A session with its full event log and the latest version of each block.

    Instances are immutable snapshots: every change produces a new one, so a
    caller's copy never shifts under it. ``code_blocks`` is in creation order.
    """

    model_config = ConfigDict(frozen=True)  # type: ignore[assignment]

    event_log: list[DevSessionEvent] = Field(default_factory=list)
    code_blocks: dict[UUID, CodeBlock] = Field(default_factory=dict)

    @property
    def last_event_id(self) -> int:
        return self.event_log[-1].event_id if self.event_log else 0

    def get_code_block(self, block_id: UUID) -> CodeBlock | None:
        return self.code_blocks.get(block_id)

    def get_summary(self, now: datetime | None = None) -> SessionSummary:
        """Duration (until the end, or now), event count, and blocks and lines per language."""
        end = self.end_time or now or utcnow()
        blocks = Counter(b.language for b in self.code_blocks.values())
        lines: Counter[str] = Counter()
        for block in self.code_blocks.values():
            lines[block.language] += block.line_count
        return SessionSummary(
            dev_session_id=self.dev_session_id, title=self.title, status=self.status,
            duration_seconds=max(0.0, (end - self.start_time).total_seconds()),
            event_count=len(self.event_log), block_count=len(self.code_blocks),
            languages={lang: LanguageStats(blocks=n, lines=lines[lang])
                       for lang, n in sorted(blocks.items())},
        )


class BlockChange(BaseModel):
    """A block after a change, the event that recorded it and the diff."""

    block: CodeBlock
    event: DevSessionEvent
    diff: str


class TurnResult(BaseModel):
    """What recording one chat turn produced."""

    prompt_event: DevSessionEvent
    response_event: DevSessionEvent
    changes: list[BlockChange]
