"""Projects: one VM each, holding a git repository. List, inspect, create, undo,
snapshots and rollback, archive and restore, delete, gc. Each handler is one call into
``ProjectService``, as ``somnus project`` makes; long ones are operations keyed by the
project's name, which is also its VM's, so they exclude VM operations on it too."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from api import sse
from api.context import Ctx
from api.models import (
    GcResult,
    ProjectCreate,
    ProjectDetail,
    ProjectGc,
    ProjectPath,
    ProjectRestore,
    ProjectSummary,
    ProjectTest,
    RevertResult,
    SnapshotCreate,
    SnapshotPath,
)
from api.operations import OperationView, Progress
from api.routes.common import ACCEPTED, PROTECTED, accepted
from orchestrator.projects import browse
from orchestrator.views import SnapshotView

router = APIRouter(prefix="/projects", tags=["projects"], **PROTECTED)
# Bodies that may be left out (never mutated).
NO_RESTORE_OPTIONS = ProjectRestore()
NO_GC_OPTIONS = ProjectGc()
NO_TEST_OPTIONS = ProjectTest()


@router.get("")
def list_projects(ctx: Ctx) -> list[ProjectSummary]:
    """Every project with its VM's state, source and count of AI commits."""
    return [ProjectSummary.of(v) for v in ctx.host.projects().list_projects()]


@router.post("", status_code=202, responses=ACCEPTED)
def create_project(body: ProjectCreate, ctx: Ctx, response: Response) -> OperationView:
    """Create a project VM, empty or with a clone of ``repo`` (an operation); a taken
    name fails at once."""
    ctx.host.projects().check_new(body.name)

    def work(progress: Progress) -> dict[str, Any]:
        result = ctx.host.projects().create(body.name, body.repo, body.memory_mib, progress)
        return {**result.project.model_dump(mode="json"), "head": result.head,
                "files": result.files, "memory": asdict(result.memory)}

    return accepted(ctx.ops.start("project create", body.name, work), response)


@router.post("/gc")
def gc_projects(ctx: Ctx, body: ProjectGc = NO_GC_OPTIONS) -> GcResult:
    """Clean up after stale projects: records without a VM, temp bundles, old archives."""
    return GcResult.of(ctx.host.projects().gc(body.dry_run, body.older_than_days), body.dry_run)


@router.get("/{name}")
def project_info(name: ProjectPath, ctx: Ctx) -> ProjectDetail:
    """One project: its record, VM, snapshots and the commits Somnus made."""
    return ProjectDetail.of_info(ctx.host.projects().info(name))


# Reading the repository: the project's VM must be in front (409 otherwise); a read
# never swaps the foreground.
@router.get("/{name}/tree")
def project_tree(name: ProjectPath, ctx: Ctx) -> browse.RepoTree:
    """Every file tracked at HEAD, with its size."""
    return ctx.host.projects().tree(name)


@router.get("/{name}/file")
def project_file(name: ProjectPath, ctx: Ctx, path: Annotated[str, Query(
        min_length=1, max_length=4096, pattern=r"^[^/\x00-\x1f-][^\x00-\x1f]*$",
        description="a path inside the repository")]) -> browse.FileView:
    """One file at HEAD (text up to 512 KiB; a binary file only says so)."""
    return ctx.host.projects().read_file(name, path)


@router.get("/{name}/log")
def project_log(name: ProjectPath, ctx: Ctx,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[browse.CommitLine]:
    """The newest commits of HEAD; ``kind`` marks those Somnus made."""
    return ctx.host.projects().log(name, limit)


@router.get("/{name}/commits/{sha}")
def project_commit(name: ProjectPath, ctx: Ctx, sha: Annotated[str, PathParam(
        pattern="^[0-9a-f]{4,40}$")]) -> browse.CommitDiff:
    """One commit's subject and unified diff."""
    return ctx.host.projects().commit(name, sha)


@router.post("/{name}/undo", status_code=202, responses=ACCEPTED)
def undo_project(name: ProjectPath, ctx: Ctx, response: Response) -> OperationView:
    """Revert the last AI commit as a new commit (an operation: the VM may need
    activating); the model is told in the next chat turn."""
    ctx.host.projects().get(name)  # an unknown project is a 404 now, not a failed operation

    def work(progress: Progress) -> dict[str, Any]:
        result = ctx.host.projects().undo(name, progress)
        return {"project": name, "undone": asdict(result.undone), "commit": result.commit,
                "memory": asdict(result.memory)}

    return accepted(ctx.ops.start("project undo", name, work), response)


@router.post("/{name}/snapshots", status_code=201)
def snapshot_project(name: ProjectPath, body: SnapshotCreate, ctx: Ctx) -> SnapshotView:
    """Snapshot the project VM (disk, and memory when it runs)."""
    with ctx.ops.claimed("project snapshot", name):
        return SnapshotView.model_validate(
            ctx.host.projects().snapshot(name, body.name, body.description))


@router.post("/{name}/snapshots/{snapshot}/rollback")
def rollback_project(name: ProjectPath, snapshot: SnapshotPath, ctx: Ctx) -> RevertResult:
    """Return the project VM, repository included, to a snapshot."""
    with ctx.ops.claimed("project rollback", name):
        state = ctx.host.projects().rollback(name, snapshot)
    return RevertResult(name=name, snapshot=snapshot, state=state)


@router.post("/{name}/archive", status_code=202, responses=ACCEPTED)
def archive_project(name: ProjectPath, ctx: Ctx, response: Response) -> OperationView:
    """Stop the VM and compact its disk (an operation); 'restore' brings it back."""
    ctx.host.projects().get(name)

    def work(_: Progress) -> dict[str, Any]:
        return asdict(ctx.host.projects().archive(name))

    return accepted(ctx.ops.start("project archive", name, work), response)


@router.post("/{name}/restore", status_code=202, responses=ACCEPTED)
def restore_project(name: ProjectPath, ctx: Ctx, response: Response,
                    body: ProjectRestore = NO_RESTORE_OPTIONS) -> OperationView:
    """Bring an archived project back, and boot its VM unless ``start`` is false (an
    operation)."""
    ctx.host.projects().get(name)

    def work(progress: Progress) -> dict[str, Any]:
        ctx.host.projects().restore(name, body.start, progress)
        return {"project": name, "started": body.start}

    return accepted(ctx.ops.start("project restore", name, work), response)


@router.post("/{name}/test", response_class=StreamingResponse, responses=sse.RUN_EVENTS)
def test_project(name: ProjectPath, ctx: Ctx, body: ProjectTest = NO_TEST_OPTIONS,
                 ) -> StreamingResponse:
    """Run the project's tests (``command``, or detected) in a sandbox in the artifacts VM
    on a copy of its HEAD; the run's events stream as from ``/artifacts/{name}/runs``."""
    events = ctx.host.artifacts.test_project(name, body.command)
    return sse.response(sse.model_events(events))


@router.delete("/{name}", status_code=204)
def delete_project(name: ProjectPath, ctx: Ctx) -> None:
    """Delete a project: its VM (disk, snapshots, memory) and its records."""
    with ctx.ops.claimed("project delete", name):
        ctx.host.projects().delete(name)
