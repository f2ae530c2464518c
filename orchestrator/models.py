"""Records the orchestrator keeps in SQLite (SQLModel), and the one VM state enum."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from core.types import utcnow
from guest_agent.protocol import Subsystem

__all__ = [
    "StateTransition",
    "Subsystem",
    "SwapOutcome",
    "SwapPhase",
    "SwapRecord",
    "SystemCache",
    "VMRecord",
    "VMState",
    "utcnow",
]



class VMState(StrEnum):
    """Every state a Somnus VM can be in, for the whole project."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    SAVING = "saving"
    SAVED = "saved"
    RESTORING = "restoring"
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"


class VMRecord(SQLModel, table=True):
    """One VM the orchestrator created: its identity, resources, paths and ports."""

    __tablename__ = "vms"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    domain_name: str = Field(unique=True)
    subsystem: Subsystem
    state: VMState = VMState.CREATING
    memory_mib: int
    vcpus: int
    accel: str
    image_hash: str
    vm_dir: str
    ssh_port: int = Field(unique=True)
    agent_port: int = Field(unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    last_error: str | None = None
    # When the VM last left the foreground or entered it: least recently used is demoted first.
    last_active_at: datetime = Field(default_factory=utcnow)
    domain_uuid: str | None = None  # libvirt's UUID: tells our domains from orphans
    # The host port of the artifacts VM's web artifacts (None: other VMs have none).
    web_port: int | None = None
    # Why the security policy holds the VM ("suspended by rule 'auth-flood'"): it does not
    # run again until the user releases it ('somnus security release'). None: free.
    security_hold: str | None = None


class StateTransition(SQLModel, table=True):
    """A recorded change of a VM's state, with the reason."""

    __tablename__ = "vm_state_history"

    id: int | None = Field(default=None, primary_key=True)
    vm_name: str = Field(index=True)
    from_state: VMState | None
    to_state: VMState
    at: datetime = Field(default_factory=utcnow)
    reason: str = ""


class SwapPhase(StrEnum):
    """How far a foreground swap got; recovery after a crash starts from here."""

    STARTED = "started"
    FROM_PAUSED = "from_paused"
    TO_STARTED = "to_started"
    TO_READY = "to_ready"


class SwapOutcome(StrEnum):
    IN_PROGRESS = "in_progress"
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class SwapRecord(SQLModel, table=True):
    """The handover ledger: one row per foreground swap, in sequence."""

    __tablename__ = "swap_ledger"

    seq: int | None = Field(default=None, primary_key=True)
    from_vm: str | None
    to_vm: str
    phase: SwapPhase = SwapPhase.STARTED
    outcome: SwapOutcome = SwapOutcome.IN_PROGRESS
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    detail: str = ""


class SystemCache(SQLModel, table=True):
    """Per-VM host-side cache, so a conversation continues after the VM was swapped out."""

    __tablename__ = "system_cache"

    vm_name: str = Field(primary_key=True)
    conversation_id: str
    last_prompt: str = ""
    last_answer: str = ""
    updated_at: datetime = Field(default_factory=utcnow)
