"""Security as the CLI and the API see it: each VM's status, the anomaly log, the policy,
and releasing a held VM. The monitor (``orchestrator.security.monitor``) writes what
this reads.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from guest_agent.protocol.security import GuestEventKind
from orchestrator.models import VMState
from orchestrator.security.monitor import SecurityMonitor
from orchestrator.security.policy import (
    Metric,
    Policy,
    load_policy,
    policy_path,
    save_policy,
)
from orchestrator.security.tables import EventKind, EventRow, Level, SecurityStore
from orchestrator.vms import VMService

# A VM with a warning in this window shows 'warning'.
RECENT = timedelta(hours=1)
# The samples whose readings make a VM's current metrics (a guest is asked every few).
RECENT_SAMPLES = 10
SecurityLevel = Literal["ok", "warning", "held"]


class SecurityEventView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    vm_name: str
    kind: EventKind
    level: Level
    rule: str | None
    metric: str | None
    value: float | None
    threshold: float | None
    action: str | None
    detail: str
    evidence: list[Any]

    @classmethod
    def of(cls, row: EventRow) -> SecurityEventView:
        return cls.model_validate({**row.model_dump(), "evidence": row.evidence_list()})


class VMSecurityMetrics(BaseModel):
    """The original design's per-VM security metrics, counted from the anomaly log over
    the last hour (it defined them and never filled them in)."""

    content_filter_violations: int = 0  # secrets redacted before storage
    prompt_injection_attempts: int = 0
    capability_violations: int = 0  # unexpected listeners, sandbox escapes
    rate_limit_violations: int = 0  # failed authentications, sandbox limits
    suspicious_activities: list[str] = []  # the rules that fired
    last_violation: datetime | None = None
    threat_score: float = 0.0  # 0..1: the worst recent event (info .1, warning .5, critical .9)


class VMSecurityView(BaseModel):
    """One VM's security: held or not, its latest sample, its recent events."""

    name: str
    state: VMState
    status: SecurityLevel
    hold: str | None
    sampled_at: datetime | None  # None: no monitor has sampled it
    metrics: dict[str, float]
    recent_events: dict[str, int]  # per level, over the last hour
    security_metrics: VMSecurityMetrics


_THREAT = {Level.INFO: 0.1, Level.WARNING: 0.5, Level.CRITICAL: 0.9}
_COUNTED_AS = {
    GuestEventKind.SECRET_REDACTED.value: "content_filter_violations",
    GuestEventKind.PROMPT_INJECTION.value: "prompt_injection_attempts",
    GuestEventKind.SANDBOX_ESCAPE.value: "capability_violations",
    GuestEventKind.AUTH_FAILURE.value: "rate_limit_violations",
    GuestEventKind.SANDBOX_LIMIT.value: "rate_limit_violations",
}
_RULE_COUNTED_AS = {
    Metric.UNEXPECTED_LISTENERS: "capability_violations",
    Metric.SANDBOX_ESCAPE_ATTEMPTS: "capability_violations",
    Metric.AUTH_FAILURES_PER_MIN: "rate_limit_violations",
}


def original_metrics(events: list[EventRow]) -> VMSecurityMetrics:
    """The original's metric fields from a VM's recent events."""
    counts: dict[str, int] = {}
    fired: list[str] = []
    for event in events:
        if event.kind is EventKind.GUEST and event.action in _COUNTED_AS:
            field = _COUNTED_AS[event.action]
        elif event.kind is EventKind.RULE and event.metric is not None:
            fired.append(f"{event.rule}: {event.detail}")
            field = _RULE_COUNTED_AS.get(Metric(event.metric), "")
        else:
            continue
        if field:
            counts[field] = counts.get(field, 0) + 1
    violations = [e for e in events if e.kind in (EventKind.GUEST, EventKind.RULE)]
    return VMSecurityMetrics(
        **counts, suspicious_activities=sorted(set(fired)),
        last_violation=max((e.at for e in violations), default=None),
        threat_score=max((_THREAT[e.level] for e in violations), default=0.0))


def security_level(hold: str | None, recent: dict[str, int]) -> SecurityLevel:
    if hold:
        return "held"
    return "warning" if recent.get(Level.WARNING, 0) or recent.get(Level.CRITICAL, 0) else "ok"


class SampleView(BaseModel):
    """One round's metrics of a VM; ``at`` is Unix time."""

    at: float
    metrics: dict[str, float]


class SecurityService:
    """Reads and the user's verbs over the monitor's records."""

    def __init__(self, vms: VMService, store: SecurityStore) -> None:
        self.vms = vms
        self.store = store
        self._loaded: tuple[int | None, Policy] | None = None  # (file mtime, policy)

    def policy(self) -> Policy:
        """The policy in force; the file is parsed again only when it changed (the
        monitor asks every round)."""
        try:
            mtime: int | None = policy_path(self.vms.settings.home).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if self._loaded is None or self._loaded[0] != mtime:
            self._loaded = (mtime, load_policy(self.vms.settings.home))
        return self._loaded[1]

    def set_policy(self, policy: Policy) -> Policy:
        path = save_policy(self.vms.settings.home, policy)
        self._loaded = (path.stat().st_mtime_ns, policy)
        return policy

    def monitor(self) -> SecurityMonitor:
        return SecurityMonitor(self.vms, self.store, self.policy)

    def recent_counts(self) -> dict[str, dict[str, int]]:
        return self.store.counts(datetime.now(UTC) - RECENT)

    def status(self, name: str | None = None) -> list[VMSecurityView]:
        records = [self.vms.store.get_vm(name)] if name else self.vms.list_vms()
        counts = self.recent_counts()
        views = []
        for record in records:
            # Guest metrics come every few rounds: each metric's newest reading.
            samples = self.store.samples(record.name, limit=RECENT_SAMPLES)
            at = samples[-1][0] if samples else None
            metrics = {k: v for _, sample in samples for k, v in sample.items()}
            recent = counts.get(record.name, {})
            events = self.store.events(record.name, datetime.now(UTC) - RECENT, limit=1000)
            views.append(VMSecurityView(
                name=record.name, state=self.vms.observe(record).state,
                status=security_level(record.security_hold, recent),
                hold=record.security_hold,
                sampled_at=datetime.fromtimestamp(at, UTC) if at is not None else None,
                metrics=metrics, recent_events=recent,
                security_metrics=original_metrics(events)))
        return views

    def samples(self, name: str, limit: int = 60) -> list[SampleView]:
        """A VM's newest ``limit`` samples, oldest first (the dashboard's charts)."""
        self.vms.store.get_vm(name)  # NotFound names the VM
        return [SampleView(at=at, metrics=metrics)
                for at, metrics in self.store.samples(name, limit)]

    def events(self, vm: str | None = None, since: datetime | None = None,
               limit: int = 200) -> list[SecurityEventView]:
        if vm is not None:
            self.vms.store.get_vm(vm)  # NotFound names the VM
        return [SecurityEventView.of(r) for r in self.store.events(vm, since, limit)]

    def release(self, name: str) -> VMSecurityView:
        """Let a held VM come back: a suspended foreground VM resumes with its memory
        intact (another stays paused until activated: one VM in front), a terminated one
        may be started again. The release is logged."""
        with self.vms.changing():
            record = self.vms.store.get_vm(name)
            hold = record.security_hold
            foreground = self.vms.store.foreground() == name
            self.vms.lifecycle.release(record, resume=foreground)
        self.store.add_event(EventRow(
            vm_name=name, kind=EventKind.RELEASE, level=Level.INFO, action="release",
            detail=f"released by the user (was {hold})" if hold else "released (was not held)"))
        return self.status(name)[0]
