"""Security: each VM's status, the anomaly log, the policy (read and replace), releases.
Each handler is one call into ``orchestrator.security.service``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import TypeAdapter, ValidationError

from api.context import Ctx
from api.models import VMPath
from api.routes.common import PROTECTED
from core.errors import InvalidInput
from orchestrator.security.policy import Policy
from orchestrator.security.service import SampleView, SecurityEventView, VMSecurityView

router = APIRouter(prefix="/security", tags=["security"], **PROTECTED)
# A date and a time, as RFC 3339 writes them. A pattern, not pydantic's datetime: that one
# also takes a bare number as Unix time.
ISO_TIME = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?$"
_TIME = TypeAdapter(datetime)


def parse_time(text: str) -> datetime:
    """A time the pattern admitted (UTC unless it names an offset); month 13 is refused."""
    try:
        at = _TIME.validate_python(text)
    except ValidationError:
        raise InvalidInput(f"since={text!r} is not a time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@router.get("")
def security_status(ctx: Ctx) -> list[VMSecurityView]:
    """Every VM's status (ok, warning, held), latest sample and events of the last hour."""
    return ctx.host.security.status()


@router.get("/events")
def security_events(
    ctx: Ctx,
    vm: Annotated[str | None, Query(description="only this VM's events")] = None,
    since: Annotated[str | None, Query(
        description="RFC 3339 time, e.g. 2026-12-05T10:00:00Z", pattern=ISO_TIME,
        json_schema_extra={"format": "date-time"})] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 200,
) -> list[SecurityEventView]:
    """The anomaly log, newest first: rules that fired with their evidence, actions taken,
    what the guests reported, releases."""
    return ctx.host.security.events(vm, parse_time(since) if since else None, limit)


@router.get("/vms/{name}/samples")
def vm_samples(name: VMPath, ctx: Ctx,
               limit: Annotated[int, Query(ge=1, le=1000)] = 60) -> list[SampleView]:
    """A VM's newest metric samples, oldest first (CPU, memory, disk… over time)."""
    return ctx.host.security.samples(name, limit)


@router.get("/policy")
def get_policy(ctx: Ctx) -> Policy:
    """The policy in force: rules of metric, threshold, duration and action."""
    return ctx.host.security.policy()


@router.put("/policy")
def put_policy(body: Policy, ctx: Ctx) -> Policy:
    """Replace the policy (validated first); the monitor applies it on its next round."""
    return ctx.host.security.set_policy(body)


@router.post("/vms/{name}/release")
def release_vm(name: VMPath, ctx: Ctx) -> VMSecurityView:
    """Let a VM the policy held run again: a suspended one resumes with its memory intact."""
    return ctx.host.security.release(name)
