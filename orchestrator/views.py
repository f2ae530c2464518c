"""Read models: one document per thing, shared by the CLI's ``--json`` and the REST API.

Everything here is computed, never written: a VM's state is the live one
(:func:`~orchestrator.lifecycle.live_state` over libvirt, or over the API server's
event-fed live view), so ``somnus vm list --json`` and ``GET /vms`` agree by
construction, and a read can never start, resume or repair anything.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlmodel import col, func, select

from guest_agent.protocol import InfoResponse, Subsystem
from orchestrator import errors_log
from orchestrator.lifecycle import live_state
from orchestrator.models import (
    StateTransition,
    SwapOutcome,
    SwapPhase,
    VMRecord,
    VMState,
)
from orchestrator.security.service import (
    SecurityLevel,
    SecurityService,
    VMSecurityView,
    security_level,
)
from orchestrator.security.tables import SecurityStore
from orchestrator.store import Store
from orchestrator.vms import Orphan, VMService

# What every domain gets from domain_xml: nothing outside is reachable from a guest.
GUEST_NETWORK = ("isolated: QEMU user-mode networking with restrict=on; "
                 "SSH and agent forwarded on 127.0.0.1 only")
# A VM's domain state in Somnus terms, None when libvirt has no such domain.
DomainStates = Callable[[VMRecord], VMState | None]
Tier = Literal["foreground", "overlay", "background", "paused", "saved", "stopped", "error",
               "creating", "saving", "restoring", "deleted"]


class VMView(BaseModel):
    """One VM: its record (without internal ids and paths) and live figures."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    domain_name: str
    subsystem: Subsystem
    state: VMState  # live: from libvirt, not just the record
    tier: Tier  # where it stands against the foreground
    memory_mib: int
    vcpus: int
    accel: str
    image_hash: str
    ssh_port: int
    agent_port: int
    web_port: int | None = None  # the artifacts VM's web artifacts (http://127.0.0.1:PORT/)
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime
    last_error: str | None
    uptime_s: float | None  # seconds since it last entered 'running'; None unless running
    error_count: int
    security: SecurityLevel  # held by the policy, warned in the last hour, or ok
    security_hold: str | None = None  # why the policy holds it ('somnus security release')


class SecurityStatus(BaseModel):
    status: Literal["ok", "warning"]
    guest_network: str
    secrets_private: bool  # database, SSH key and every token are 0600
    api_loopback_only: bool | None  # None when not asked about an API listener
    issues: list[str]


class FleetView(BaseModel):
    """``AIVMListResponse`` of the original design, with real figures."""

    total: int
    counts: dict[VMState, int]  # every live state, zeros included
    foreground: str | None
    average_uptime_s: float | None  # over running VMs; None when none runs
    security: SecurityStatus
    vms: list[VMView]


class VMStatus(VMView):
    resident_mib: int  # RSS of its QEMU process; 0 when it has none


class OrphanView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    domain_name: str
    reason: str


class StatusView(BaseModel):
    """The foreground, every VM's tier and resident memory against the budget."""

    policy: str
    foreground: str | None
    budget_limit_mib: int
    budget_used_mib: int
    vms: list[VMStatus]
    orphans: list[OrphanView]  # domains of this home no VM owns ('somnus vm prune')


class SwapView(BaseModel):
    """One row of the handover ledger: a VM entering the foreground."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    from_vm: str | None
    to_vm: str
    phase: SwapPhase
    outcome: SwapOutcome
    started_at: datetime
    finished_at: datetime | None
    detail: str


def swap_views(store: Store, limit: int = 20) -> list[SwapView]:
    """The most recent swaps, newest first."""
    return [SwapView.model_validate(row) for row in store.swaps(limit)]


class TransitionView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_state: VMState | None
    to_state: VMState
    at: datetime
    reason: str


class ErrorView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    source: str
    message: str


class VMDetail(VMView):
    """One VM in full: paths, state history, recent errors and what its agent reports."""

    paths: dict[str, str]
    history: list[TransitionView]
    recent_errors: list[ErrorView]
    agent: InfoResponse | None
    security_report: VMSecurityView  # the monitor's latest readings, recent events


class SnapshotView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    created: int  # Unix time
    state: str  # the domain's state when taken: 'running' snapshots include memory
    description: str


class ActivateView(BaseModel):
    """What a foreground switch did, and how long each phase took."""

    vm: str
    previous: str | None
    path: str  # already | resumed | restored | cold-boot | cold-boot-after-bad-save | ...
    seconds: float  # until the target is the foreground; "settle" in timings comes after
    seq: int | None = None
    timings: dict[str, float] = {}


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def _running_since(store: Store) -> dict[str, datetime]:
    """When each VM last entered 'running' (one query)."""
    query = (select(StateTransition.vm_name, func.max(StateTransition.at))
             .where(StateTransition.to_state == VMState.RUNNING)
             .group_by(col(StateTransition.vm_name)))
    with store.session() as s:
        return {name: _aware(at) for name, at in s.exec(query)}


def _tier(record: VMRecord, state: VMState, foreground: str | None) -> Tier:
    if state is VMState.RUNNING:
        if record.name == foreground:
            return "foreground"
        overlay = foreground is not None and record.subsystem is Subsystem.ARTIFACTS
        return "overlay" if overlay else "background"
    tier: Tier = state.value  # type: ignore[assignment]  # every other state names its tier
    return tier


def _view(record: VMRecord, domain_state: VMState | None, foreground: str | None,
          since: dict[str, datetime], errors: dict[str, int], now: datetime,
          security: dict[str, dict[str, int]]) -> VMView:
    observed = live_state(record, domain_state)
    started = since.get(record.name)
    running = observed.state is VMState.RUNNING
    uptime = round((now - started).total_seconds(), 1) if running and started else None
    return VMView.model_validate({
        **record.model_dump(), "state": observed.state, "last_error": observed.error,
        "tier": _tier(record, observed.state, foreground), "uptime_s": uptime,
        "error_count": errors.get(record.name, 0),
        "security": security_level(record.security_hold, security.get(record.name, {}))})


def _views(service: VMService, states: DomainStates | None,
           records: list[VMRecord] | None = None) -> list[VMView]:
    states = states or service.lifecycle.domain_state
    store = service.store
    foreground, since, errors = store.foreground(), _running_since(store), \
        errors_log.error_counts(store)
    now = datetime.now(UTC)
    security = _security(service).recent_counts()
    return [_view(r, states(r), foreground, since, errors, now, security)
            for r in (store.list_vms() if records is None else records)]


def _security(service: VMService) -> SecurityService:
    return SecurityService(service, SecurityStore(service.store.engine))


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def security_status(service: VMService, records: list[VMRecord],
                    extra_secrets: Iterable[Path] = (),
                    api_host: str | None = None) -> SecurityStatus:
    """Check what can be checked cheaply: secrets' modes and where the API listens."""
    issues: list[str] = []
    settings = service.settings
    secrets = [settings.db_path, settings.keys_dir / "id_ed25519", *extra_secrets]
    for path in secrets:
        if path.exists() and not _private(path):
            issues.append(f"{path} is readable by other users (chmod 600)")
    for record in records:
        token = service.paths(record.name).token
        if not token.exists():
            issues.append(f"VM '{record.name}': agent token missing ({token})")
        elif not _private(token):
            issues.append(f"VM '{record.name}': agent token readable by other users")
    secrets_private = not issues
    loopback = None
    if api_host is not None:
        loopback = is_loopback(api_host)
        if not loopback:
            issues.append(f"the API listens on {api_host}: reachable from the network")
    return SecurityStatus(status="warning" if issues else "ok", guest_network=GUEST_NETWORK,
                          secrets_private=secrets_private, api_loopback_only=loopback,
                          issues=issues)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fleet_view(service: VMService, states: DomainStates | None = None,
               extra_secrets: Iterable[Path] = (), api_host: str | None = None) -> FleetView:
    """Every VM in its live state, with counts, average uptime and security."""
    views = _views(service, states)
    counts: dict[VMState, int] = {s: 0 for s in VMState if s is not VMState.DELETED}
    for view in views:
        counts[view.state] += 1
    uptimes = [v.uptime_s for v in views if v.uptime_s is not None]
    return FleetView(
        total=len(views), counts=counts, foreground=service.store.foreground(),
        average_uptime_s=round(sum(uptimes) / len(uptimes), 1) if uptimes else None,
        security=security_status(service, service.store.list_vms(), extra_secrets, api_host),
        vms=views,
    )


def status_view(service: VMService, states: DomainStates | None = None,
                orphans: list[Orphan] | None = None) -> StatusView:
    """The foreground, tiers and the budget as measured now (and orphan domains)."""
    records = service.store.list_vms()  # once: the hot read of the API
    views = _views(service, states, records)
    budget = service.lifecycle.budget(records)
    rows = [VMStatus(**v.model_dump(), resident_mib=budget.resident_mib.get(v.name, 0))
            for v in views]
    return StatusView(
        policy=service.settings.policy.value, foreground=service.store.foreground(),
        budget_limit_mib=budget.limit_mib, budget_used_mib=budget.used_mib, vms=rows,
        orphans=[OrphanView.model_validate(o)
                 for o in (service.orphans(records) if orphans is None else orphans)],
    )


def vm_detail(service: VMService, name: str, states: DomainStates | None = None,
              recent_errors: int = 5) -> VMDetail:
    """One VM in full (asks its agent when it runs)."""
    info = service.info(name)
    store = service.store
    state = (states or service.lifecycle.domain_state)(info.record)
    (report,) = _security(service).status(name)
    view = _view(info.record, state, store.foreground(), _running_since(store),
                 errors_log.error_counts(store), datetime.now(UTC),
                 {name: report.recent_events})
    paths = {"root": str(info.paths.root), "disk": str(info.paths.overlay),
             "seed": str(info.paths.seed), "serial_log": str(info.paths.serial_log)}
    return VMDetail(
        **view.model_dump(), paths=paths,
        history=[TransitionView.model_validate(h) for h in info.history],
        recent_errors=[ErrorView.model_validate(e)
                       for e in errors_log.list_errors(store, name, recent_errors)],
        agent=info.agent, security_report=report,
    )


def snapshot_views(service: VMService, name: str) -> list[SnapshotView]:
    return [SnapshotView.model_validate(s) for s in service.snapshot_list(name)]
