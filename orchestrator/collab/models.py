"""A collaboration as the host keeps it: its settings, its status, its transcript entries.

The status names follow the original design's ``ResearchStatus`` where they mean the
same (active, paused, completed, error, cancelled). A collaboration whose process died
is ``active`` in the database with no one holding its lock; it is shown as ``paused``
and ``somnus collab resume`` takes it up again.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from guest_agent.protocol.collab import AgentRole, CollabAction

DEFAULT_MAX_TURNS = 6
DEFAULT_MAX_STRIKES = 2


class CollabStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # stopped mid-run (a killed process): resumable
    COMPLETED = "completed"  # a guard or a final answer ended it
    CANCELLED = "cancelled"
    ERROR = "error"


FINISHED = frozenset({CollabStatus.COMPLETED, CollabStatus.CANCELLED, CollabStatus.ERROR})


class TurnOrder(StrEnum):
    ROUND_ROBIN = "round-robin"
    GRAPH = "graph"  # each role names the roles that may speak after it


class Placement(StrEnum):
    """Where the roles run."""

    PER_ROLE = "per-role"  # each role in its own agent VM, taking turns through the swap engine
    SHARED = "shared"  # every role in one agent VM (the fallback, and a benchmark baseline)


class EndReason(StrEnum):
    FINAL_ANSWER = "final_answer"
    MAX_TURNS = "max_turns"
    TOKEN_BUDGET = "token_budget"
    TIME_BUDGET = "time_budget"
    NO_PROGRESS = "no_progress"
    CANCELLED = "cancelled"
    ERROR = "error"


class EntryKind(StrEnum):
    TURN = "turn"
    NOTE = "note"  # what the host says: a fallback placement, a resume, a strike, the end


class CollabLimits(BaseModel):
    """The guards, all enforced together; the first one reached ends the run."""

    max_turns: int = Field(default=DEFAULT_MAX_TURNS, ge=1, le=200)
    budget_tokens: int = Field(default=20_000, ge=100, le=10_000_000)
    budget_minutes: float = Field(default=60.0, gt=0, le=24 * 60)
    max_strikes: int = Field(default=DEFAULT_MAX_STRIKES, ge=1, le=50)
    turn_max_tokens: int = Field(default=160, ge=8, le=512)


class Team(BaseModel):
    """Who collaborates and in what order (``orchestrator.collab.team``)."""

    model_config = ConfigDict(extra="forbid")

    roles: list[AgentRole] = Field(min_length=1, max_length=12)
    order: TurnOrder = TurnOrder.ROUND_ROBIN
    moderator: str | None = None  # speaks after every other turn when set

    def role(self, name: str) -> AgentRole:
        return next(r for r in self.roles if r.name == name)


class TranscriptEntry(BaseModel):
    """One line of the append-only transcript: a turn (who said what, at what cost) or a
    note of the host's."""

    seq: int
    kind: EntryKind
    at: float  # Unix time it was appended
    role: str | None = None
    vm: str | None = None
    action: CollabAction | None = None
    content: str
    findings: list[str] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turn_s: float = 0.0  # the agent's own time for the turn
    swap_s: float = 0.0  # bringing its VM to the foreground (and its model loaded)
    swap_path: str | None = None
    strike: str | None = None  # why the turn counted as no progress
    fallback: str | None = None
    retrieved: list[str] = Field(default_factory=list)
    identity: str | None = None  # the SYSTEM/IDENTITY layer the turn's prompt had

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class CollabView(BaseModel):
    """A collaboration as ``list``, ``show`` and the API give it."""

    id: str
    task: str
    status: CollabStatus
    team: Team
    limits: CollabLimits
    placement: Placement
    policy: str  # the swap policy it ran under (single-active or budget)
    vms: dict[str, str]  # role -> the VM it speaks from
    turns: int
    tokens: int
    strikes: int
    elapsed_s: float
    swap_s: float
    end_reason: EndReason | None = None
    final_answer: str | None = None
    error: str | None = None
    created_at: float
    updated_at: float


class CollabList(BaseModel):
    collaborations: list[CollabView]


class Transcript(BaseModel):
    collab: CollabView
    entries: list[TranscriptEntry]
