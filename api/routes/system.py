"""Health (public) and the foreground/budget status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.context import VERSION, Ctx
from api.models import Health
from api.routes.common import PROTECTED
from orchestrator import views
from orchestrator.views import StatusView, SwapView

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


@router.get("/swaps")
def swaps(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[SwapView]:
    """The handover ledger, newest first: which VM came forward, from which, how it ended
    and when (``finished_at - started_at`` is how long the swap took)."""
    return views.swap_views(ctx.host.store, limit)
