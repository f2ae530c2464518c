"""``somnus artifact``: versioned programs, run in disposable sandboxes in the artifacts VM."""

from __future__ import annotations

import json
import sys
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import Clock, JsonFlag, emit_json, err, host, out
from core.errors import InvalidInput
from guest_agent.protocol.runs import (
    Language,
    NetworkMode,
    RunEvent,
    RunEventKind,
    RunOutcome,
    RunResult,
)
from orchestrator.artifacts.export import ExportFormat
from orchestrator.artifacts.service import ArtifactService
from orchestrator.artifacts.sources import read_sources
from orchestrator.artifacts.tables import ArtifactKind, ArtifactRow, ArtifactRunRow

artifact_app = typer.Typer(
    help="Artifacts: programs with versions, run in sandboxes in the artifacts VM.",
    no_args_is_help=True,
)
NameArg = Annotated[str, typer.Argument(help="Artifact name.")]
PathsArg = Annotated[list[Path], typer.Argument(help="Files or folders with the code.")]
# Exit codes of `run` beside the program's own (docker run's conventions).
EXIT_SANDBOX_ERROR = 125
EXIT_LIMIT = 137


def artifacts() -> ArtifactService:
    return host().artifacts


def _artifact_dict(row: ArtifactRow) -> dict[str, Any]:
    return row.model_dump(mode="json")


def _run_dict(row: ArtifactRunRow) -> dict[str, Any]:
    data = row.model_dump(mode="json", exclude={"result"})
    data["result"] = json.loads(row.result) if row.result else None
    return data


@artifact_app.command("create")
def artifact_create(
    name: NameArg,
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders with the code.")]
    = None,
    lang: Annotated[Language | None, typer.Option("--lang",
                                                  help="The language it is written in.")] = None,
    entry: Annotated[str | None, typer.Option(help="The file a run starts from.")] = None,
    kind: Annotated[ArtifactKind, typer.Option(help="What it is.")] = ArtifactKind.PROGRAM,
    from_session: Annotated[str | None, typer.Option(
        "--from-session", help="Take the code blocks of this dev session instead.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an artifact (version 1) from files or a folder, or a dev session's code."""
    if from_session is not None:
        row = artifacts().from_session(from_session, name)
    elif paths and lang is not None:
        row = artifacts().create(name, lang, read_sources(paths), entry, kind)
    else:
        raise InvalidInput("give the files and --lang, or --from-session ID")
    if as_json:
        emit_json(_artifact_dict(row))
    else:
        out.print(f"artifact '{name}' created ({row.language}, entry {row.entry}): "
                  f"'somnus artifact run {name}'")


@artifact_app.command("update")
def artifact_update(
    name: NameArg,
    paths: PathsArg,
    message: Annotated[str, typer.Option("-m", "--message", help="What changed.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Make a new version from these files (every earlier version is kept)."""
    version = artifacts().update(name, read_sources(paths), message)
    if as_json:
        emit_json(version.model_dump(mode="json", exclude={"files"}))
    else:
        out.print(f"artifact '{name}' is now at version {version.number}")


@artifact_app.command("list")
def artifact_list(as_json: JsonFlag = False) -> None:
    """List artifacts."""
    rows = artifacts().store.list_artifacts()
    if as_json:
        emit_json([_artifact_dict(r) for r in rows])
        return
    table = Table("NAME", "KIND", "LANGUAGE", "ENTRY", "VERSION", "STATUS", "UPDATED")
    for r in rows:
        table.add_row(r.name, r.kind, r.language, escape(r.entry), str(r.latest_version),
                      r.status, f"{r.updated_at:%Y-%m-%d %H:%M}")
    out.print(table if rows else "no artifacts yet: 'somnus artifact create NAME --lang L FILE'")


@artifact_app.command("show")
def artifact_show(
    name: NameArg,
    version: Annotated[int | None, typer.Option(help="Version (default: the latest).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """An artifact's versions and the files of one of them."""
    svc = artifacts()
    row = svc.store.get(name)
    chosen = svc.store.version(name, version)
    files = chosen.sources()
    if as_json:
        emit_json({**_artifact_dict(row), "version": chosen.number,
                   "versions": [v.model_dump(mode="json", exclude={"files"})
                                for v in svc.store.versions(name)],
                   "files": [f.model_dump() for f in files]})
        return
    out.print(f"[bold]{name}[/] {row.kind} {row.language}, entry {escape(row.entry)}, "
              f"version {chosen.number} of {row.latest_version} ({row.status})")
    for f in files:
        size = len(f.content) * 3 // 4 if f.base64 else len(f.content.encode())
        out.print(f"  {escape(f.path)}  {size} bytes")


@artifact_app.command("run")
def artifact_run(
    name: NameArg,
    version: Annotated[int | None, typer.Option(help="Version (default: the latest).")] = None,
    stdin: Annotated[Path | None, typer.Option(help="A file for the program's stdin.")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="An argument (repeat).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-time limit, seconds.")] = None,
    memory: Annotated[int | None, typer.Option(help="Memory limit, MiB.")] = None,
    network: Annotated[NetworkMode, typer.Option(
        help="off: loopback only (the guest itself has no outside network).")]
    = NetworkMode.OFF,
    as_json: JsonFlag = False,
) -> None:
    """Run an artifact in a fresh sandbox; output streams as it comes.

    Exits with the program's exit code; 137 when a limit stopped it, 125 when the
    sandbox failed, 1 for a compile error.
    """
    events = artifacts().run(name, version, stdin=stdin.read_text() if stdin else "",
                             args=arg or [], limits={"wall_s": timeout, "memory_mib": memory,
                                                     "network": network},
                             progress=None if as_json else Clock())  # fmt: skip
    report_run(events, as_json)


def report_run(events: Iterator[RunEvent], as_json: bool) -> None:
    """Stream a run's output (or print its result as JSON), then exit with its outcome."""
    result = _follow(events, as_json)
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        err.print(_summary(result), highlight=False)
    raise typer.Exit(_exit_code(result))


def _follow(events: Iterator[RunEvent], as_json: bool) -> RunResult:
    result: RunResult | None = None
    for event in events:
        if event.kind is RunEventKind.RESULT:
            result = event.result
        elif not as_json and event.kind is RunEventKind.STDOUT:
            sys.stdout.write(event.data or "")
            sys.stdout.flush()
        elif not as_json and event.kind is RunEventKind.STDERR:
            sys.stderr.write(event.data or "")
            sys.stderr.flush()
        elif not as_json and event.kind is RunEventKind.PHASE and event.phase:
            err.print(f"[dim]-- {event.phase.value}[/]")
    if result is None:
        raise typer.Exit(EXIT_SANDBOX_ERROR)
    return result


def _summary(result: RunResult) -> str:
    took = f"in {result.duration_s:.2f}s"
    if result.compile_s is not None:
        took += f" (compiled in {result.compile_s:.1f}s)"
    match result.outcome:
        case RunOutcome.OK:
            return f"-- exit 0 {took}"
        case RunOutcome.FAILED:
            how = f"signal {result.signal}" if result.signal else f"exit {result.exit_code}"
            return f"-- failed: {how} {took}"
        case RunOutcome.COMPILE_ERROR:
            where = "; ".join(f"{d.file}:{d.line}: {d.message}" for d in result.diagnostics[:3])
            return f"-- compile error{': ' + where if where else ''}"
        case RunOutcome.LIMIT:
            cut = ", output truncated" if result.truncated else ""
            return f"-- stopped by the {result.limit} limit {took}{cut}"
        case _:
            return f"-- sandbox error: {result.error}"


def _exit_code(result: RunResult) -> int:
    match result.outcome:
        case RunOutcome.OK:
            return 0
        case RunOutcome.FAILED:
            return result.exit_code if result.exit_code else 1
        case RunOutcome.COMPILE_ERROR:
            return 1
        case RunOutcome.LIMIT:
            return EXIT_LIMIT
        case _:
            return EXIT_SANDBOX_ERROR


@artifact_app.command("open")
def artifact_open(
    name: NameArg,
    version: Annotated[int | None, typer.Option(help="Version (default: the latest).")] = None,
    browser: Annotated[bool, typer.Option("--browser", help="Open it in a browser too.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Serve a web artifact from the artifacts VM and print its URL; the foreground VM
    keeps running (the artifacts VM comes up beside it)."""
    url, status = artifacts().open(name, version, None if as_json else Clock())
    if as_json:
        emit_json({"url": url, **status.model_dump(mode="json")})
        return
    out.print(f"{name} ({status.mode}): {url}")
    if browser:
        webbrowser.open(url)


@artifact_app.command("stop")
def artifact_stop(
    name: Annotated[str | None, typer.Argument(help="Only if it is the open one.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Stop serving the open web artifact."""
    status = artifacts().close(name)
    if as_json:
        emit_json(status.model_dump(mode="json"))
    else:
        out.print(f"web artifact run {status.run_id} stopped")


@artifact_app.command("runs")
def artifact_runs(name: NameArg, as_json: JsonFlag = False) -> None:
    """An artifact's runs, oldest first."""
    svc = artifacts()
    svc.store.get(name)
    rows = svc.store.runs(name)
    if as_json:
        emit_json([_run_dict(r) for r in rows])
        return
    table = Table("RUN", "VERSION", "OUTCOME", "EXIT", "LIMIT", "SECONDS", "STARTED")
    for r in rows:
        table.add_row(r.id, str(r.version), r.outcome or "unfinished",
                      r.signal or ("" if r.exit_code is None else str(r.exit_code)),
                      r.limit or "", "" if r.duration_s is None else f"{r.duration_s:.2f}",
                      f"{r.started_at:%Y-%m-%d %H:%M:%S}")
    out.print(table if rows else f"no runs of '{name}' yet: 'somnus artifact run {name}'")


@artifact_app.command("logs")
def artifact_logs(
    run: Annotated[str, typer.Argument(help="Run id (see 'somnus artifact runs NAME').")],
    as_json: JsonFlag = False,
) -> None:
    """A run's recorded output (stdout to stdout, stderr to stderr) and its result."""
    svc = artifacts()
    events = svc.events(run)
    if as_json:
        emit_json({**_run_dict(svc.store.run(run)),
                   "events": [e.model_dump(mode="json", exclude_none=True) for e in events],
                   "files_dir": str(svc.run_dir(run) / "files")})
        return
    result = _follow(iter(events), as_json=False)
    err.print(_summary(result), highlight=False)


@artifact_app.command("export")
def artifact_export(
    name: NameArg,
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", help="zip, tar (.tar.gz), dir, or html (a static web artifact, one page).")]
    = ExportFormat.ZIP,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Where (default: ./NAME-vN.zip…).")] = None,
    version: Annotated[int | None, typer.Option(help="Version (default: the latest).")] = None,
    to_project: Annotated[str | None, typer.Option(
        "--to-project", help="Commit it into this project's repository instead.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Export a version: its source, what its last run produced, and a manifest."""
    svc = artifacts()
    if to_project:
        sha = svc.export_to_project(name, to_project, version, None if as_json else Clock())
        if as_json:
            emit_json({"artifact": name, "project": to_project, "commit": sha})
        else:
            out.print(f"artifact '{name}' committed into project '{to_project}' as {sha[:8]} "
                      f"(under artifacts/{name}/; 'somnus project undo {to_project}' reverts)")
        return
    path = svc.export(name, fmt, output, version)
    if as_json:
        emit_json({"artifact": name, "format": fmt, "path": str(path)})
    else:
        out.print(f"exported '{name}' to {path}")


@artifact_app.command("delete")
def artifact_delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete an artifact with every version and run record."""
    if not yes:
        typer.confirm(f"Delete artifact '{name}' with all its versions and runs?", abort=True,
                      err=True)
    artifacts().delete(name)
    out.print(f"artifact '{name}' deleted")
