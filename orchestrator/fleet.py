"""The VM fleet at a glance: per-VM views with uptime and errors, counts per state,
average uptime and the security posture. The REST API returns these models as they
are; anything else wanting the same summary calls the same functions.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlmodel import col, func, select

from guest_agent.protocol import InfoResponse, Subsystem
from orchestrator import errors_log
from orchestrator.models import StateTransition, VMRecord, VMState
from orchestrator.store import Store
from orchestrator.vms import VMService

# What every domain gets from domain_xml: nothing outside is reachable from a guest.
GUEST_NETWORK = ("isolated: QEMU user-mode networking with restrict=on; "
                 "SSH and agent forwarded on 127.0.0.1 only")


class VMView(BaseModel):
    """One VM: its record (without internal ids and paths) and live figures."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    domain_name: str
    subsystem: Subsystem
    state: VMState
    memory_mib: int
    vcpus: int
    accel: str
    image_hash: str
    ssh_port: int
    agent_port: int
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime
    last_error: str | None
    uptime_s: float | None  # seconds since it last entered 'running'; None unless running
    error_count: int


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


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def _running_since(store: Store) -> dict[str, datetime]:
    """When each VM last entered 'running' (one query)."""
    query = (select(StateTransition.vm_name, func.max(StateTransition.at))
             .where(StateTransition.to_state == VMState.RUNNING)
             .group_by(col(StateTransition.vm_name)))
    with store.session() as s:
        return {name: _aware(at) for name, at in s.exec(query)}


def _view(record: VMRecord, since: dict[str, datetime], errors: dict[str, int],
          now: datetime) -> VMView:
    started = since.get(record.name)
    uptime = (round((now - started).total_seconds(), 1)
              if record.state is VMState.RUNNING and started else None)
    return VMView.model_validate({**record.model_dump(), "uptime_s": uptime,
                                  "error_count": errors.get(record.name, 0)})


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


def fleet_view(service: VMService, extra_secrets: Iterable[Path] = (),
               api_host: str | None = None) -> FleetView:
    """Every VM (reconciled with libvirt) with counts, average uptime and security."""
    records = service.list_vms()
    now = datetime.now(UTC)
    since = _running_since(service.store)
    errors = errors_log.error_counts(service.store)
    views = [_view(r, since, errors, now) for r in records]
    counts: dict[VMState, int] = {s: 0 for s in VMState if s is not VMState.DELETED}
    for view in views:
        counts[view.state] += 1
    uptimes = [v.uptime_s for v in views if v.uptime_s is not None]
    return FleetView(
        total=len(views), counts=counts, foreground=service.store.foreground(),
        average_uptime_s=round(sum(uptimes) / len(uptimes), 1) if uptimes else None,
        security=security_status(service, records, extra_secrets, api_host), vms=views,
    )


def vm_detail(service: VMService, name: str, recent_errors: int = 5) -> VMDetail:
    """One VM in full (asks its agent when it runs)."""
    info = service.info(name)
    view = _view(info.record, _running_since(service.store),
                 errors_log.error_counts(service.store), datetime.now(UTC))
    paths = {"root": str(info.paths.root), "disk": str(info.paths.overlay),
             "seed": str(info.paths.seed), "serial_log": str(info.paths.serial_log)}
    return VMDetail(
        **view.model_dump(), paths=paths,
        history=[TransitionView.model_validate(h) for h in info.history],
        recent_errors=[ErrorView.model_validate(e)
                       for e in errors_log.list_errors(service.store, name, recent_errors)],
        agent=info.agent,
    )
