"""The security monitor's records in the orchestrator's SQLite file: a bounded time series
of samples per VM, and the anomaly log (every rule that fired, every action taken, what
the guests reported, every release), kept across restarts.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Field, SQLModel, col, select

from orchestrator.models import utcnow
from orchestrator.store import SQLiteStore


class EventKind(StrEnum):
    RULE = "rule"  # a rule fired, and the action taken
    GUEST = "guest"  # the agent reported it about itself
    RELEASE = "release"  # the user let a held VM come back
    FAILURE = "failure"  # an action could not be taken (it is retried)


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class SampleRow(SQLModel, table=True):
    __tablename__ = "security_samples"

    id: int | None = Field(default=None, primary_key=True)
    vm_name: str = Field(index=True)
    at: float  # Unix time on the host
    metrics: str  # JSON object: Metric -> value


class EventRow(SQLModel, table=True):
    __tablename__ = "security_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    vm_name: str = Field(index=True)
    kind: EventKind
    level: Level
    rule: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    action: str | None = None
    detail: str = ""
    evidence: str = "[]"  # JSON: the samples ([time, value]) that led to it
    guest_epoch: float | None = None  # the agent's start time, with ``guest_seq``:
    guest_seq: int | None = None  # which guest event this is, so none is read twice

    def evidence_list(self) -> list[Any]:
        return list(json.loads(self.evidence))


class SecurityStore(SQLiteStore):
    """Samples (pruned to the newest ``keep`` per VM) and events."""

    def add_sample(self, vm: str, at: float, metrics: dict[str, float], keep: int) -> None:
        with self.session() as s:
            s.add(SampleRow(vm_name=vm, at=at, metrics=json.dumps(metrics)))
            s.commit()
            row_id = s.exec(select(func.max(SampleRow.id))).one() or 0
            # Prune now and then, not on every insert: ids grow by one per sample.
            if row_id % 50 == 0:
                cutoff = s.exec(select(SampleRow.id).where(SampleRow.vm_name == vm)
                                .order_by(col(SampleRow.id).desc()).offset(keep)
                                .limit(1)).first()
                if cutoff is not None:
                    s.exec(delete(SampleRow).where(
                        col(SampleRow.vm_name) == vm, col(SampleRow.id) <= cutoff))
                    s.commit()

    def samples(self, vm: str, limit: int = 60) -> list[tuple[float, dict[str, float]]]:
        """The newest ``limit`` samples of ``vm``, oldest first."""
        with self.session() as s:
            rows = s.exec(select(SampleRow).where(SampleRow.vm_name == vm)
                          .order_by(col(SampleRow.id).desc()).limit(limit)).all()
        return [(r.at, json.loads(r.metrics)) for r in reversed(rows)]

    def last_sample_id(self) -> int:
        with self.session() as s:
            return int(s.exec(select(func.max(SampleRow.id))).one() or 0)

    def samples_after(self, row_id: int, limit: int = 200) -> list[SampleRow]:
        """Every VM's samples newer than row ``row_id``, oldest first (a live feed's next)."""
        with self.session() as s:
            return list(s.exec(select(SampleRow).where(col(SampleRow.id) > row_id)
                               .order_by(col(SampleRow.id)).limit(limit)))

    def add_event(self, event: EventRow) -> EventRow:
        with self.session() as s:
            s.add(event)
            s.commit()
            s.refresh(event)
            return event

    def events(self, vm: str | None = None, since: datetime | None = None,
               limit: int = 200) -> list[EventRow]:
        """Events, newest first."""
        query = select(EventRow)
        if vm is not None:
            query = query.where(EventRow.vm_name == vm)
        if since is not None:
            query = query.where(col(EventRow.at) >= since)
        with self.session() as s:
            return list(s.exec(query.order_by(col(EventRow.id).desc()).limit(limit)))

    def last_guest_seq(self, vm: str, epoch: float) -> int:
        """The newest guest event already logged for ``vm``'s agent started at ``epoch``."""
        with self.session() as s:
            seq = s.exec(select(func.max(EventRow.guest_seq)).where(
                EventRow.vm_name == vm, EventRow.guest_epoch == epoch)).one()
        return int(seq or 0)

    def counts(self, since: datetime) -> dict[str, dict[str, int]]:
        """Events per VM and level since ``since``."""
        query = (select(EventRow.vm_name, EventRow.level, func.count())
                 .where(col(EventRow.at) >= since)
                 .group_by(col(EventRow.vm_name), col(EventRow.level)))
        out: dict[str, dict[str, int]] = {}
        with self.session() as s:
            for vm, level, n in s.exec(query):
                out.setdefault(vm, {})[str(level)] = int(n)
        return out
