"""The security part of the host <-> guest protocol: screening verdicts, redaction
reports, and the metrics and events a guest reports about itself (``GET /security``).

Names follow the original Somnus (``ThreatLevel`` and its 0.3/0.5/0.7/0.9 bands).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class ThreatLevel(StrEnum):
    """How likely a piece of text is a prompt injection (score bands 0.3/0.5/0.7/0.9)."""

    MINIMAL = "minimal"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class ContentSource(StrEnum):
    """Where screened text came from; everything but the user's own words is third-party."""

    USER_INPUT = "user_input"
    MEMORY = "memory"
    CONTEXT = "context"  # documents, project files, research sources, artifact output
    HISTORY = "history"


class ScreeningResult(BaseModel):
    """One flagged piece of prompt content (benign content is not listed)."""

    source: ContentSource
    ref: str | None = None  # a memory id, or the context item's position
    threat: ThreatLevel
    score: float = Field(ge=0.0, le=1.0)
    matched: list[str] = Field(default_factory=list)  # pattern names, "similar:<name>"


class Redaction(BaseModel):
    """What was taken out of a text before it was stored: secret kinds and how many."""

    kinds: dict[str, int] = Field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.kinds.values())


class GuestEventKind(StrEnum):
    AUTH_FAILURE = "auth_failure"
    PROMPT_INJECTION = "prompt_injection"
    SANDBOX_LIMIT = "sandbox_limit"
    SANDBOX_ESCAPE = "sandbox_escape"
    SECRET_REDACTED = "secret_redacted"


class GuestSecurityEvent(BaseModel):
    """Something the agent saw happen to itself; numbered so the host reads each once."""

    seq: int
    at: float  # Unix time in the guest
    kind: GuestEventKind
    detail: str = ""


class ProcessUsage(BaseModel):
    pid: int
    name: str
    user: str
    cpu_percent: float
    rss_mib: float


class ListeningPort(BaseModel):
    port: int
    address: str
    process: str = ""


class GuestMetrics(BaseModel):
    """``GET /security?since=SEQ``: the guest's own view, and the events after ``since``.

    Counters are totals since the agent started (the host turns them into rates);
    ``agent_started`` tells a restart (counters back at zero) from a quiet period.
    """

    vm_name: str
    at: float
    agent_started: float
    process_count: int
    top_processes: list[ProcessUsage]
    listening: list[ListeningPort]
    net_rx_bytes: int
    net_tx_bytes: int
    disk_used_percent: float
    failed_ssh_logins: int  # since boot, from sshd's journal
    failed_agent_auths: int
    prompt_injections: int
    sandbox_limit_hits: int
    sandbox_escape_attempts: int
    blocked_outbound: int | None = None  # None: the guest cannot see it (slirp drops it)
    events: list[GuestSecurityEvent] = Field(default_factory=list)
