"""VMs: list with fleet figures, create, inspect, start, stop, delete, activate,
snapshots and per-VM errors. Each handler is one call into the service layer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.context import Ctx
from api.models import (
    RefPath,
    RevertResult,
    SnapshotCreate,
    SnapshotPath,
    StopResult,
    VMCreate,
    VMPath,
    VMStart,
    VMStop,
)
from api.operations import OperationView, Progress
from api.routes.common import ACCEPTED, PROTECTED, accepted
from orchestrator import errors_log, views
from orchestrator.views import ActivateView, ErrorView, FleetView, SnapshotView, VMDetail

router = APIRouter(prefix="/vms", tags=["vms"], **PROTECTED)
# Bodies that may be left out (never mutated).
NO_START_OPTIONS = VMStart()
NO_STOP_OPTIONS = VMStop()


@router.get("", response_model=FleetView)
async def list_vms(ctx: Ctx) -> Response:
    """Every VM with its uptime and errors; counts per state, average uptime, security."""
    body = await ctx.reads.get("vms", lambda: views.fleet_view(
        ctx.host.vms, ctx.states, ctx.secrets, ctx.api_host))
    return Response(body, media_type="application/json")


@router.post("", status_code=202, responses=ACCEPTED)
def create_vm(body: VMCreate, ctx: Ctx, response: Response) -> OperationView:
    """Create and boot a VM (an operation); a taken name or unknown image fails at once."""
    ctx.host.vms.check_new(body.name, body.image, body.memory_mib, body.vcpus, body.subsystem)

    def work(progress: Progress) -> dict[str, Any]:
        record, timings = ctx.host.vms.create(body.name, body.subsystem, body.memory_mib,
                                               body.vcpus, body.image, body.wait, progress)
        return {"name": record.name, "state": record.state.value, "timings": timings}

    return accepted(ctx.ops.start("create", body.name, work), response)


@router.get("/{name}")
def vm_info(name: VMPath, ctx: Ctx) -> VMDetail:
    """One VM: resources, ports, paths, state history, recent errors, its agent's report."""
    return views.vm_detail(ctx.host.vms, name, ctx.states)


@router.post("/{name}/start", status_code=202, responses=ACCEPTED)
def start_vm(name: VMPath, ctx: Ctx, response: Response,
             body: VMStart = NO_START_OPTIONS) -> OperationView:
    """Boot a stopped VM (an operation)."""
    ctx.host.vms.store.get_vm(name)  # an unknown VM is a 404 now, not a failed operation

    def work(progress: Progress) -> dict[str, Any]:
        return {"name": name, "timings": ctx.host.vms.start(name, body.wait, progress)}

    return accepted(ctx.ops.start("start", name, work), response)


@router.post("/{name}/stop")
def stop_vm(name: VMPath, ctx: Ctx, body: VMStop = NO_STOP_OPTIONS) -> StopResult:
    """Shut the VM down (ACPI, then power off after a timeout)."""
    with ctx.ops.claimed("stop", name):
        return StopResult(name=name, clean=ctx.host.vms.stop(name, body.force))


@router.delete("/{name}", status_code=204)
def delete_vm(name: VMPath, ctx: Ctx) -> None:
    """Delete the VM: domain, disk, seed and record."""
    with ctx.ops.claimed("delete", name):
        ctx.host.vms.delete(name)


@router.post("/{name}/activate", status_code=202, responses=ACCEPTED)
def activate_vm(name: RefPath, ctx: Ctx, response: Response) -> OperationView:
    """Bring the VM to the foreground (an operation that ends when its agent answers)."""
    target = ctx.host.swap.resolve(name).name

    def work(progress: Progress) -> dict[str, Any]:
        result: ActivateView = ctx.host.swap.activate(target, progress)
        return result.model_dump(mode="json")

    return accepted(ctx.ops.start("activate", target, work), response)


@router.get("/{name}/errors")
def vm_errors(name: VMPath, ctx: Ctx) -> list[ErrorView]:
    """What failed on this VM since it was created, newest first."""
    return [ErrorView.model_validate(e) for e in errors_log.list_errors(ctx.host.store, name)]


# -- snapshots ---------------------------------------------------------------------------


@router.post("/{name}/snapshots", status_code=201)
def create_snapshot(name: VMPath, body: SnapshotCreate, ctx: Ctx) -> SnapshotView:
    """Snapshot the disk, and the memory when the VM runs."""
    with ctx.ops.claimed("snapshot", name):
        return SnapshotView.model_validate(
            ctx.host.vms.snapshot_create(name, body.name, body.description))


@router.get("/{name}/snapshots")
def list_snapshots(name: VMPath, ctx: Ctx) -> list[SnapshotView]:
    """The VM's snapshots, oldest first."""
    return views.snapshot_views(ctx.host.vms, name)


@router.post("/{name}/snapshots/{snapshot}/revert")
def revert_snapshot(name: VMPath, snapshot: SnapshotPath, ctx: Ctx) -> RevertResult:
    """Return the VM to the snapshot (disk, and memory if it was taken running)."""
    with ctx.ops.claimed("revert", name):
        state = ctx.host.vms.snapshot_revert(name, snapshot)
    return RevertResult(name=name, snapshot=snapshot, state=state)


@router.delete("/{name}/snapshots/{snapshot}", status_code=204)
def delete_snapshot(name: VMPath, snapshot: SnapshotPath, ctx: Ctx) -> None:
    with ctx.ops.claimed("snapshot delete", name):
        ctx.host.vms.snapshot_delete(name, snapshot)
