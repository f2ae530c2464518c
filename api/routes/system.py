"""Health (public) and the foreground/budget status."""

from __future__ import annotations

from fastapi import APIRouter

from api.app import VERSION, Ctx
from api.models import Health
from api.routes.common import PROTECTED
from orchestrator.swap import StatusView, SwapEngine

public = APIRouter(tags=["system"])
router = APIRouter(tags=["system"], **PROTECTED)


@public.get("/health")
def health() -> Health:
    """Liveness; the only route that needs no token."""
    return Health(status="ok", version=VERSION)


@router.get("/status")
def status(ctx: Ctx) -> StatusView:
    """The foreground VM, every VM's state and tier, and memory used against the budget."""
    return SwapEngine(ctx.service()).status()
