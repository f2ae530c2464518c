"""Health (public) and the foreground/budget status."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.context import VERSION, Ctx
from api.models import Health
from api.routes.common import PROTECTED
from orchestrator import views
from orchestrator.views import StatusView

public = APIRouter(tags=["system"])
router = APIRouter(tags=["system"], **PROTECTED)


@public.get("/health")
def health() -> Health:
    """Liveness; the only route that needs no token."""
    return Health(status="ok", version=VERSION)


@router.get("/status", response_model=StatusView)
async def status(ctx: Ctx) -> Response:
    """The foreground VM, every VM's state and tier, and memory used against the budget.

    Computed, never written: an open swap stays open until a mutating request."""
    body = await ctx.reads.get("status", lambda: views.status_view(ctx.host.vms, ctx.states))
    return Response(body, media_type="application/json")
