"""Per-VM error records: what failed on a VM, when, and which command or operation saw it.

The records live in the orchestrator's SQLite database beside the VM records. Like
the state history they outlive a deleted VM, but a VM only lists the errors since
it was created, so a new VM of the same name starts clean.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import Field, SQLModel, col, select

from core.errors import SomnusError
from orchestrator.models import VMRecord, utcnow
from orchestrator.store import Store

# Keep one record readable in a listing; tracebacks belong in logs.
MAX_MESSAGE_CHARS = 2000


class VMErrorRecord(SQLModel, table=True):
    """One failure seen on a VM."""

    __tablename__ = "vm_errors"

    id: int | None = Field(default=None, primary_key=True)
    vm_name: str = Field(index=True)
    at: datetime = Field(default_factory=utcnow)
    source: str  # the command or operation that failed, e.g. "operation start"
    message: str


def add_error(store: Store, vm: str, source: str, message: str) -> VMErrorRecord:
    """Record that ``source`` failed on ``vm`` with ``message``."""
    record = VMErrorRecord(vm_name=vm, source=source[:200], message=message[:MAX_MESSAGE_CHARS])
    with store.session() as s:
        s.add(record)
        s.commit()
        s.refresh(record)
        return record


def list_errors(store: Store, vm: str, limit: int = 100) -> list[VMErrorRecord]:
    """The VM's errors since it was created, newest first (NotFound if there is no such VM)."""
    since = store.get_vm(vm).created_at
    query = (select(VMErrorRecord)
             .where(VMErrorRecord.vm_name == vm, col(VMErrorRecord.at) >= since)
             .order_by(col(VMErrorRecord.at).desc(), col(VMErrorRecord.id).desc())
             .limit(limit))
    with store.session() as s:
        return list(s.exec(query))


def errors_after(store: Store, error_id: int, limit: int = 100) -> list[VMErrorRecord]:
    """Every VM's errors recorded after row ``error_id`` (0: all), oldest first."""
    with store.session() as s:
        return list(s.exec(select(VMErrorRecord).where(col(VMErrorRecord.id) > error_id)
                           .order_by(col(VMErrorRecord.id)).limit(limit)))


def last_error_id(store: Store) -> int:
    with store.session() as s:
        return int(s.exec(select(func.max(VMErrorRecord.id))).one() or 0)


def error_counts(store: Store) -> dict[str, int]:
    """Errors per existing VM since it was created, as ``list_errors`` counts them (one query)."""
    query = (select(VMErrorRecord.vm_name, func.count())
             .join(VMRecord, col(VMRecord.name) == col(VMErrorRecord.vm_name))
             .where(col(VMErrorRecord.at) >= col(VMRecord.created_at))
             .group_by(col(VMErrorRecord.vm_name)))
    with store.session() as s:
        return {name: count for name, count in s.exec(query)}


def record_failure(store: Store, vm: str, source: str, exc: BaseException) -> bool:
    """Record ``exc`` against ``vm`` when it is a failure of the VM or its host side.

    Refusals of the request itself (bad input, unknown names, conflicts: 4xx) say
    nothing about the VM and are not recorded; neither is anything about a VM that
    does not exist. Returns whether a record was written.
    """
    status = exc.http_status if isinstance(exc, SomnusError) else 500
    if status < 500 or store.find_vm(vm) is None:
        return False
    message = exc.message if isinstance(exc, SomnusError) else f"{type(exc).__name__}: {exc}"
    add_error(store, vm, source, message)
    return True
