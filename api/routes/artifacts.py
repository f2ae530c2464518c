"""Artifacts: create, version, list, delete; runs stream their events as server-sent
events (``RunEvent`` data, ending in ``[DONE]``), and stay readable afterwards with their
output and produced files. Each handler is one call into ``ArtifactService``, as
``somnus artifact`` makes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse

from api import sse
from api.context import Ctx
from api.models import (
    ArtifactCreate,
    ArtifactDetail,
    ArtifactPath,
    ArtifactRun,
    ArtifactRunLog,
    ArtifactRunView,
    ArtifactUpdate,
    ArtifactVersionView,
    ArtifactView,
    RunPath,
    WebView,
    sources,
)
from api.routes.common import PROTECTED
from guest_agent.protocol.runs import RunResult, WebStatus
from orchestrator.artifacts.tables import ArtifactRunRow

router = APIRouter(prefix="/artifacts", tags=["artifacts"], **PROTECTED)
# Literal paths (/web, /runs/…) are declared before /{name}: the first match wins.


def _run_view(row: ArtifactRunRow) -> ArtifactRunView:
    result = RunResult.model_validate_json(row.result) if row.result else None
    return ArtifactRunView.model_validate({**row.model_dump(exclude={"result"}),
                                           "result": result})

@router.get("")
def list_artifacts(ctx: Ctx) -> list[ArtifactView]:
    """Every artifact, by name."""
    return [ArtifactView.model_validate(r.model_dump())
            for r in ctx.host.artifacts.store.list_artifacts()]


@router.post("", status_code=201)
def create_artifact(body: ArtifactCreate, ctx: Ctx) -> ArtifactView:
    """Create an artifact (version 1) from its files."""
    row = ctx.host.artifacts.create(body.name, body.language, sources(body.files), body.entry,
                                    body.kind)
    return ArtifactView.model_validate(row.model_dump())


@router.get("/{name}")
def artifact_detail(name: ArtifactPath, ctx: Ctx) -> ArtifactDetail:
    """An artifact with its versions and the latest version's files."""
    store = ctx.host.artifacts.store
    row = store.get(name)
    versions = [ArtifactVersionView.model_validate(v.model_dump()) for v in store.versions(name)]
    return ArtifactDetail.model_validate({**row.model_dump(), "versions": versions,
                                          "files": store.version(name).sources()})


@router.post("/{name}/versions", status_code=201)
def update_artifact(name: ArtifactPath, body: ArtifactUpdate, ctx: Ctx) -> ArtifactVersionView:
    """A new version with these files; every earlier one is kept."""
    version = ctx.host.artifacts.update(name, sources(body.files), body.message)
    return ArtifactVersionView.model_validate(version.model_dump())


@router.delete("/web")
def close_web(ctx: Ctx) -> WebStatus:
    """Stop serving the open web artifact."""
    return ctx.host.artifacts.close()


@router.delete("/{name}", status_code=204)
def delete_artifact(name: ArtifactPath, ctx: Ctx) -> None:
    """Delete an artifact with its versions and run records."""
    ctx.host.artifacts.delete(name)


@router.post("/{name}/runs", response_class=StreamingResponse, responses=sse.RUN_EVENTS)
def run_artifact(name: ArtifactPath, body: ArtifactRun, ctx: Ctx) -> StreamingResponse:
    """Run a version in a fresh sandbox in the artifacts VM (activated if it is not
    running). Refusals (unknown artifact, bad limits, no artifacts VM) are ordinary
    errors; once it runs, its events stream, the last one carrying the result."""
    events = ctx.host.artifacts.run(name, body.version, body.stdin, body.args,
                                    body.limits.model_dump())  # fmt: skip
    return sse.response(sse.model_events(events))


@router.post("/{name}/open")
def open_artifact(name: ArtifactPath, ctx: Ctx) -> WebView:
    """Serve a web artifact from the artifacts VM (brought up beside the foreground VM);
    its URL on the host's loopback."""
    url, status = ctx.host.artifacts.open(name)
    return WebView.model_validate({"url": url, **status.model_dump()})


@router.get("/{name}/runs")
def artifact_runs(name: ArtifactPath, ctx: Ctx) -> list[ArtifactRunView]:
    """An artifact's runs, oldest first."""
    ctx.host.artifacts.store.get(name)
    return [_run_view(r) for r in ctx.host.artifacts.store.runs(name)]


@router.get("/runs/{run_id}")
def run_log(run_id: RunPath, ctx: Ctx) -> ArtifactRunLog:
    """One run: its record, result and every recorded event."""
    svc = ctx.host.artifacts
    view = _run_view(svc.store.run(run_id))
    return ArtifactRunLog.model_validate({**view.model_dump(), "events": svc.events(run_id)})


@router.get("/runs/{run_id}/file", response_class=FileResponse)
def run_file(run_id: RunPath, ctx: Ctx,
             path: Annotated[str, Query(min_length=1, max_length=4096,
                                        description="as in the result's files")],
             ) -> FileResponse:
    """A file the run produced (as copied to the host)."""
    return FileResponse(ctx.host.artifacts.produced_file(run_id, path))
