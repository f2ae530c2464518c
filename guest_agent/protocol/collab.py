"""Multi-agent collaboration: one turn of one agent, as the host asks for it and gets it back.

The host owns a collaboration (who speaks next, the transcript, the guards); an agent VM
only takes turns (``POST /collab/turn``). A turn carries the speaking role's definition
(its identity is rebuilt from it and pinned as the top prompt layer every turn), the
task, the tail of the shared transcript, and the findings other agents published since
this VM's last turn (its inbox: stored as memories before the turn retrieves from
memory). The reply is a grammar-constrained action: ``say`` (with at least one finding)
or, for a role allowed to end the run, ``final_answer``.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from guest_agent.protocol import PromptInspection

# A role names its VM (agent-<role>), so it follows VM names: no "-" at the end, no "--".
ROLE_NAME_PATTERN = r"^[a-z](?:-?[a-z0-9])*$"
MAX_ROLE_NAME = 24
ROLE_NAME_RE = re.compile(ROLE_NAME_PATTERN)
COLLAB_ID_PATTERN = r"^c-[0-9a-f]{8}$"
MAX_TURN_TOKENS = 512
MAX_CONTENT_CHARS = 1200  # one turn's content, as the answer's grammar bounds it
MAX_FINDING_CHARS = 160
MAX_FINDINGS = 2
COLLAB_KEY = "collab"  # the metadata keys of a finding's memory
FROM_ROLE_KEY = "from_role"


class CollabAction(StrEnum):
    """What a turn does; the only way a collaboration ends by the agents' choice."""

    SAY = "say"
    FINAL_ANSWER = "final_answer"


class AgentRole(BaseModel):
    """One role of a team (a team file's entry, or a name from ``--roles``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key in a team file is an error

    name: str = Field(pattern=ROLE_NAME_PATTERN, max_length=MAX_ROLE_NAME,
                      description="lowercase; names its VM")
    prompt_role: str = Field(min_length=1, max_length=64,
                             description="the identity-stabilised prompt role it speaks as")
    goal: str = Field(default="", max_length=500)
    constraints: list[str] = Field(default_factory=list, max_length=8)
    # Roles that may speak after this one (a transition graph); None: any.
    next: list[str] | None = None
    can_finish: bool = False  # may answer with final_answer


class TranscriptLine(BaseModel):
    """What a turn sees of an earlier turn."""

    turn: int = Field(ge=1)
    role: str
    content: str


class Finding(BaseModel):
    """A finding one agent published, on its way into another agent's memory."""

    collab_id: str
    turn: int = Field(ge=1)
    from_role: str
    content: str = Field(min_length=1, max_length=MAX_FINDING_CHARS)


class TurnRequest(BaseModel):
    """``POST /collab/turn``: one turn of ``role`` in collaboration ``collab_id``."""

    collab_id: str = Field(pattern=COLLAB_ID_PATTERN)
    turn: int = Field(ge=1)
    task: str = Field(min_length=1, max_length=4000)
    role: AgentRole
    transcript: list[TranscriptLine] = Field(default_factory=list, max_length=64)
    inbox: list[Finding] = Field(default_factory=list, max_length=200)
    actions: list[CollabAction] = Field(default_factory=lambda: [CollabAction.SAY],
                                        min_length=1)
    max_tokens: int = Field(default=160, ge=8, le=MAX_TURN_TOKENS)
    memory_top_k: int = Field(default=3, ge=0, le=10)


class TurnReply(BaseModel):
    """A turn's action and how it was made: tokens, time, the prompt's layers (the
    identity among them) and what memory gave it."""

    action: CollabAction
    content: str
    findings: list[str] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    attempts: int = 0
    fallback: str | None = None  # why the turn's answer is the fallback; None: the model's
    stored: int = 0  # inbox findings newly stored as memories
    retrieved: list[str] = Field(default_factory=list)  # the MEMORY layer's items
    prompt: PromptInspection | None = None
