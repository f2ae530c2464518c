"""``somnus project``: one VM per project, its git repository, undo and housekeeping."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.artifact import report_run
from cli.common import Clock, JsonFlag, emit_json, host, out
from orchestrator.projects import (
    REPO_DIR,
    GcPlan,
    MemoryReport,
    ProjectRow,
    ProjectService,
    ProjectView,
    host_alias,
)

project_app = typer.Typer(help="Projects: one VM each, with a git repository in it.",
                          no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Project name (also its VM's name).")]


def projects() -> ProjectService:
    return host().projects()


def _row_dict(row: ProjectRow) -> dict[str, Any]:
    return row.model_dump(mode="json")


def _view_dict(view: ProjectView) -> dict[str, Any]:
    return {**_row_dict(view.row), "vm_state": view.vm_state, "ai_commits": view.ai_commits}


def _memory_line(report: MemoryReport) -> str:
    return f"memory: {escape(report.line())}"


@project_app.command("create")
def project_create(
    name: NameArg,
    repo: Annotated[str | None, typer.Option(help="Repository URL or path to clone into it.")]
    = None,
    memory: Annotated[int | None, typer.Option(help="VM RAM in MiB.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a project VM, empty or with a clone of --repo (its README goes to memory)."""
    result = projects().create(name, repo, memory, Clock())
    if as_json:
        emit_json({**_row_dict(result.project), "head": result.head, "files": result.files,
                   "memory": asdict(result.memory)})
        return
    what = f"{result.files} files at {result.head[:8]}" if result.head else "an empty repository"
    out.print(f"project '{name}' created with {what} in {REPO_DIR}")
    if result.memory.wanted:
        out.print(_memory_line(result.memory))


@project_app.command("list")
def project_list(as_json: JsonFlag = False) -> None:
    """List projects, their VM state and source."""
    views = projects().list_projects()
    if as_json:
        emit_json([_view_dict(v) for v in views])
        return
    table = Table("NAME", "VM", "ARCHIVED", "SOURCE", "AI COMMITS", "LAST USED")
    for v in views:
        r = v.row
        table.add_row(r.name, v.vm_state, "yes" if r.archived else "",
                      escape(f"{r.source_kind.value} {r.source}".strip()), str(v.ai_commits),
                      f"{r.last_used:%Y-%m-%d %H:%M}")
    out.print(table if views else "no projects yet: try 'somnus project create NAME'")


@project_app.command("info")
def project_info(name: NameArg, as_json: JsonFlag = False) -> None:
    """Show one project: its record, VM, snapshots and the commits Somnus made."""
    info = projects().info(name)
    commits = [c.model_dump(mode="json", exclude={"id", "project"}) for c in info.commits]
    if as_json:
        emit_json({**_view_dict(info.view), "ssh_port": info.vm.ssh_port if info.vm else None,
                   "snapshots": [s.__dict__ for s in info.snapshots], "commits": commits})
        return
    table = Table(show_header=False, box=None)
    for key, value in _view_dict(info.view).items():
        table.add_row(key, escape(str(value)))
    table.add_row("ssh", f"ssh {host_alias(name)}  (after 'somnus project ssh-config {name}')")
    table.add_row("snapshots", ", ".join(s.name for s in info.snapshots) or "none")
    out.print(table)
    log = Table("COMMIT", "KIND", "SUBJECT")
    for c in commits:
        log.add_row(c["sha"][:8], c["kind"], escape(c["subject"]))
    out.print(log if commits else "Somnus has made no commits here yet")


@project_app.command("ssh", context_settings={"allow_extra_args": True,
                                              "ignore_unknown_options": True})
def project_ssh(ctx: typer.Context, name: NameArg) -> None:
    """A shell in the project folder, or a command run there: somnus project ssh NAME -- CMD."""
    argv = projects().ssh_argv(name, list(ctx.args) or None, Clock())
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@project_app.command("ssh-config")
def project_ssh_config(name: Annotated[str | None, typer.Argument(
        help="One project (default: all).")] = None) -> None:
    """Print ~/.ssh/config entries, so 'ssh somnus-NAME' works (editors too)."""
    sys.stdout.write(projects().ssh_config(name))


@project_app.command("snapshot")
def project_snapshot(
    name: NameArg,
    snapshot: str,
    description: Annotated[str, typer.Option(help="A note kept with the snapshot.")] = "",
) -> None:
    """Snapshot the project VM (disk, and memory when running)."""
    snap = projects().snapshot(name, snapshot, description)
    out.print(f"snapshot '{snapshot}' of project '{name}' taken ({snap.state})")


@project_app.command("rollback")
def project_rollback(name: NameArg, snapshot: str) -> None:
    """Return the project VM, repository included, to a snapshot."""
    state = projects().rollback(name, snapshot)
    out.print(f"project '{name}' rolled back to '{snapshot}' ({state.value})")


@project_app.command("undo")
def project_undo(name: NameArg, as_json: JsonFlag = False) -> None:
    """Revert the last AI commit as a new commit (only Somnus's own, clean tree, no merges)."""
    result = projects().undo(name, Clock())
    if as_json:
        emit_json({"project": name, "undone": asdict(result.undone), "commit": result.commit,
                   "memory": asdict(result.memory)})
        return
    out.print(f"undid {result.undone.sha[:8]} {escape(result.undone.subject)!r} with commit "
              f"{result.commit[:8]}; the model is told in the next chat turn")
    out.print(_memory_line(result.memory))


@project_app.command("archive")
def project_archive(name: NameArg) -> None:
    """Stop a stale project's VM and compact its disk; 'restore' brings it back."""
    result = projects().archive(name)
    if result.compacted:
        out.print(f"project '{name}' archived; disk {result.bytes_before >> 20} MiB -> "
                  f"{result.bytes_after >> 20} MiB")
    else:
        out.print(f"project '{name}' archived ({result.note})")


@project_app.command("restore")
def project_restore(
    name: NameArg,
    start: Annotated[bool, typer.Option(help="Boot the VM now.")] = True,
) -> None:
    """Bring an archived project back (and boot its VM)."""
    projects().restore(name, start, Clock())
    out.print(f"project '{name}' restored" + ("" if start else " (VM not started)"))


@project_app.command("delete")
def project_delete(name: NameArg) -> None:
    """Delete a project: its VM (disk, snapshots, memory) and its records."""
    projects().delete(name)
    out.print(f"project '{name}' deleted")


def _gc_dict(plan: GcPlan) -> dict[str, Any]:
    return {"orphan_records": plan.orphan_records, "stale_temp": [str(p) for p in plan.stale_temp],
            "expired": plan.expired}


@project_app.command("gc")
def project_gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    older_than: Annotated[float | None, typer.Option(
        "--older-than", help="Also delete archived projects unused for DAYS.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Clean up after stale projects: records without a VM, temp bundles, old archives."""
    plan = projects().gc(dry_run, older_than)
    if as_json:
        emit_json({**_gc_dict(plan), "dry_run": dry_run})
        return
    if plan.empty:
        out.print("nothing to clean")
        return
    verb = "would remove" if dry_run else "removed"
    for name in plan.orphan_records:
        out.print(f"{verb} record of project '{name}' (its VM is gone)")
    for path in plan.stale_temp:
        out.print(f"{verb} leftover {escape(str(path))}")
    for name in plan.expired:
        out.print(f"{verb} archived project '{name}' (unused for {older_than:g} days)")


@project_app.command("test", context_settings={"allow_extra_args": True,
                                                "ignore_unknown_options": True})
def project_test(
    name: NameArg,
    command: Annotated[list[str] | None, typer.Argument(
        help="The test command (after --); default: detected (pytest, npm test, cargo, "
             "go, make).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the project's tests in a sandbox in the artifacts VM, on a copy of its HEAD.

    Exits like 'somnus artifact run': the tests' exit code, 137 when a limit stopped
    them. The run is kept as one of the artifact '<project>-tests'.
    """
    events = host().artifacts.test_project(name, shlex.join(command) if command else None,
                                           None if as_json else Clock())
    report_run(events, as_json)
