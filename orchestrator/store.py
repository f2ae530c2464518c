"""The orchestrator's SQLite state store: VM records, their state history, the swap ledger."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlmodel import Session, select

from core.errors import NotFound
from orchestrator.models import (
    StateTransition,
    SwapOutcome,
    SwapPhase,
    SwapRecord,
    SystemCache,
    VMRecord,
    VMState,
    utcnow,
)


class SQLiteStore:
    """Base of every store on the one SQLite file (``orchestrator.database``): short sessions.

    Stores share the engine the composition root opened; the schema is the
    migrations' job, not the stores'.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session


class Store(SQLiteStore):
    """Typed access to the VM records; one short transaction per call."""

    def add_vm(self, record: VMRecord, reason: str = "created") -> VMRecord:
        with self.session() as s:
            s.add(record)
            s.add(StateTransition(vm_name=record.name, from_state=None, to_state=record.state,
                                  reason=reason))
            s.commit()
            s.refresh(record)
            return record

    def find_vm(self, name: str) -> VMRecord | None:
        with self.session() as s:
            return s.exec(select(VMRecord).where(VMRecord.name == name)).first()

    def find_vm_by_domain(self, domain_name: str) -> VMRecord | None:
        with self.session() as s:
            return s.exec(select(VMRecord).where(VMRecord.domain_name == domain_name)).first()

    def get_vm(self, name: str) -> VMRecord:
        record = self.find_vm(name)
        if record is None:
            raise NotFound(f"no VM named '{name}' (see 'somnus vm list')")
        return record

    def list_vms(self) -> list[VMRecord]:
        with self.session() as s:
            return list(s.exec(select(VMRecord).order_by(VMRecord.name)))

    def used_ports(self) -> set[int]:
        return {p for r in self.list_vms() for p in (r.ssh_port, r.agent_port, r.web_port)
                if p is not None}

    def set_state(self, name: str, state: VMState, reason: str = "",
                  error: str | None = None) -> VMRecord:
        """Move a VM to ``state`` and record the transition (no-op if unchanged).

        Only ``orchestrator.lifecycle`` calls this: it checks the move is allowed.
        """
        with self.session() as s:
            record = s.exec(select(VMRecord).where(VMRecord.name == name)).one()
            if record.state != state:
                s.add(StateTransition(vm_name=name, from_state=record.state, to_state=state,
                                      reason=reason))
                record.state = state
            record.last_error = error if state == VMState.ERROR else None
            record.updated_at = utcnow()
            s.add(record)
            s.commit()
            s.refresh(record)
            return record

    def history(self, name: str) -> list[StateTransition]:
        with self.session() as s:
            query = select(StateTransition).where(StateTransition.vm_name == name)
            return list(s.exec(query.order_by(StateTransition.id)))  # type: ignore[arg-type]

    def delete_vm(self, name: str, reason: str = "deleted") -> None:
        """Remove the record; the history keeps a final 'deleted' transition."""
        with self.session() as s:
            record = s.exec(select(VMRecord).where(VMRecord.name == name)).first()
            if record is None:
                return
            if record.state is not VMState.DELETED:
                s.add(StateTransition(vm_name=name, from_state=record.state,
                                      to_state=VMState.DELETED, reason=reason))
            s.delete(record)
            s.commit()

    def set_hold(self, name: str, hold: str | None) -> VMRecord:
        """Hold the VM for the security policy (why), or release it (None).

        Only ``orchestrator.lifecycle`` calls this, beside the state change it goes with.
        """
        with self.session() as s:
            record = s.exec(select(VMRecord).where(VMRecord.name == name)).one()
            record.security_hold = hold
            record.updated_at = utcnow()
            s.add(record)
            s.commit()
            s.refresh(record)
            return record

    def touch(self, name: str) -> None:
        """Mark the VM as just used (LRU order for demotion)."""
        with self.session() as s:
            record = s.exec(select(VMRecord).where(VMRecord.name == name)).one()
            record.last_active_at = utcnow()
            s.add(record)
            s.commit()

    # -- the handover ledger ----------------------------------------------------------------

    def open_swap(self, from_vm: str | None, to_vm: str) -> SwapRecord:
        with self.session() as s:
            swap = SwapRecord(from_vm=from_vm, to_vm=to_vm)
            s.add(swap)
            s.commit()
            s.refresh(swap)
            return swap

    def swap_phase(self, seq: int, phase: SwapPhase) -> None:
        with self.session() as s:
            swap = s.get_one(SwapRecord, seq)
            swap.phase = phase
            s.add(swap)
            s.commit()

    def close_swap(self, seq: int, outcome: SwapOutcome, detail: str = "") -> None:
        with self.session() as s:
            swap = s.get_one(SwapRecord, seq)
            swap.outcome = outcome
            swap.detail = detail
            swap.finished_at = utcnow()
            s.add(swap)
            s.commit()

    def open_swaps(self) -> list[SwapRecord]:
        """Swaps a killed orchestrator left unfinished, oldest first."""
        with self.session() as s:
            query = select(SwapRecord).where(SwapRecord.outcome == SwapOutcome.IN_PROGRESS)
            return list(s.exec(query.order_by(SwapRecord.seq)))  # type: ignore[arg-type]

    def swaps(self, limit: int = 20) -> list[SwapRecord]:
        """The most recent swaps, newest first."""
        with self.session() as s:
            query = select(SwapRecord).order_by(SwapRecord.seq.desc()).limit(limit)  # type: ignore[union-attr]
            return list(s.exec(query))

    def foreground(self) -> str | None:
        """The VM the last completed swap brought forward, if it still exists."""
        with self.session() as s:
            query = (select(SwapRecord).where(SwapRecord.outcome == SwapOutcome.DONE)
                     .order_by(SwapRecord.seq.desc()))  # type: ignore[union-attr]
            for swap in s.exec(query):
                exists = s.exec(select(VMRecord).where(VMRecord.name == swap.to_vm)).first()
                return swap.to_vm if exists else None
            return None

    # -- per-VM system cache ----------------------------------------------------------------

    def cache(self, vm_name: str) -> SystemCache | None:
        with self.session() as s:
            return s.get(SystemCache, vm_name)

    def save_cache(self, entry: SystemCache) -> None:
        with self.session() as s:
            entry.updated_at = utcnow()
            s.merge(entry)
            s.commit()
