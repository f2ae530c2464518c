"""The project service: one project = one VM with a git repository at /home/somnus/project.

A project starts empty, from a repository (``create --repo``) or from a dev
session (``promote``). Repositories are built on the host with GitPython and
travel in as git bundles over SFTP. Somnus records the hashes of the commits it
makes, so ``undo`` only ever reverts its own.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from git import Repo

from core.errors import AlreadyExists, Conflict, GuestError, SomnusError
from core.types import Progress
from guest_agent.protocol import Subsystem
from orchestrator.devsessions import DevSessionManager, DevSessionStatus
from orchestrator.devsessions.transitions import transition_event
from orchestrator.hypervisor import SnapshotInfo
from orchestrator.models import VMRecord, VMState, utcnow
from orchestrator.projects import browse, gitrepo, memories
from orchestrator.projects.housekeeping import TEMP_PREFIX, GcPlan, compact_overlay, plan_gc
from orchestrator.projects.memories import MemoryReport
from orchestrator.projects.remote import (
    REPO_DIR,
    Remote,
    SSHRemote,
    export_bundle,
    import_bundle,
    init_remote_repo,
    repo_state,
    require_clean,
)
from orchestrator.projects.sshconfig import render_entry
from orchestrator.projects.tables import (
    CommitKind,
    ProjectCommitRow,
    ProjectRow,
    ProjectStore,
    SourceKind,
)
from orchestrator.projects.undo import UndoTarget, find_target, revert, undo_note
from orchestrator.ssh import openssh_argv
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService, validate_name

RemoteFactory = Callable[[VMRecord], Remote]


@dataclass
class ProjectView:
    row: ProjectRow
    vm_state: str  # the VM's state, or "missing"
    ai_commits: int


@dataclass
class ProjectInfo:
    view: ProjectView
    vm: VMRecord | None
    commits: list[ProjectCommitRow]
    snapshots: list[SnapshotInfo] = field(default_factory=list)
    ssh_command: str | None = None  # the line that opens a shell in the project's VM


@dataclass
class CreateResult:
    project: ProjectRow
    head: str | None
    files: int
    memory: MemoryReport


@dataclass
class PromoteResult:
    project: str
    session_id: UUID
    created: bool
    commits: list[str]
    memory: MemoryReport


@dataclass
class UndoResult:
    project: str
    undone: UndoTarget
    commit: str
    memory: MemoryReport


@dataclass
class ArchiveResult:
    project: str
    compacted: bool
    bytes_before: int = 0
    bytes_after: int = 0
    note: str = ""


def _subject(message: str) -> str:
    return message.split("\n", 1)[0]


class ProjectService:
    """Projects over one :class:`VMService`; the CLI's (and later the API's) one entry point."""

    def __init__(self, service: VMService, swap: SwapEngine, store: ProjectStore,
                 sessions: DevSessionManager, remote: RemoteFactory | None = None,
                 memory_wait_s: float = 600.0) -> None:
        self.svc = service
        self.swap = swap
        self.store = store
        self.sessions = sessions
        self._remote = remote or (lambda record: SSHRemote(service.ssh_target(record)))
        # The agent needs its model for embeddings: a fresh TCG VM loads it for minutes.
        self.memory_wait_s = memory_wait_s

    @property
    def temp_dir(self) -> Path:
        return self.svc.settings.home / "project-tmp"

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A host folder for one operation's clone and bundles, removed afterwards."""
        self.temp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=self.temp_dir) as path:
            yield Path(path)

    # -- lookup -------------------------------------------------------------------------

    def get(self, name: str) -> ProjectRow:
        return self.store.get(name)

    def _active(self, name: str) -> ProjectRow:
        row = self.store.get(name)
        if row.archived:
            raise Conflict(f"project '{name}' is archived; 'somnus project restore {name}' first")
        return row

    def _running(self, row: ProjectRow, progress: Progress | None = None) -> VMRecord:
        """The project's VM, brought to the foreground first if it is not running."""
        record = self.svc.store.get_vm(row.vm_name)
        if not self.svc.hv.is_running(record.domain_name):
            self.swap.activate(record.name, progress=progress)
            record = self.svc.store.get_vm(row.vm_name)
        self.store.touch(row.name)
        return record

    def _view(self, row: ProjectRow, vms: dict[str, VMRecord]) -> ProjectView:
        vm = vms.get(row.vm_name)
        ai = sum(c.kind == CommitKind.AI for c in self.store.commits(row.name))
        return ProjectView(row, self.svc.observe(vm).state.value if vm else "missing", ai)

    def list_projects(self) -> list[ProjectView]:
        vms = {r.name: r for r in self.svc.list_vms()}
        return [self._view(row, vms) for row in self.store.list_projects()]

    def info(self, name: str) -> ProjectInfo:
        row = self.store.get(name)
        vms = {r.name: r for r in self.svc.list_vms()}
        vm = vms.get(row.vm_name)
        snapshots: list[SnapshotInfo] = []
        if vm is not None:
            with suppress(SomnusError):  # a vanished domain still shows the rest
                snapshots = self.svc.snapshot_list(vm.name)
        ssh = None
        if vm is not None:  # what ssh_argv runs, with a terminal for the login shell
            argv = openssh_argv(self.svc.ssh_target(vm), [f'cd {REPO_DIR} && exec "$SHELL" -l'])
            ssh = shlex.join([argv[0], "-t", *argv[1:]])
        return ProjectInfo(self._view(row, vms), vm, self.store.commits(name), snapshots, ssh)

    # -- creation -----------------------------------------------------------------------

    def _new_project(self, name: str, kind: SourceKind, source: str, branch: str,
                     memory_mib: int | None, progress: Progress | None
                     ) -> tuple[ProjectRow, VMRecord]:
        """The row first, then the VM: a crash in between leaves a record gc removes."""
        row = self.store.add(ProjectRow(name=name, vm_name=name, source_kind=kind,
                                        source=source, branch=branch))
        try:
            record, _ = self.svc.create(name, Subsystem.PROJECT, memory_mib=memory_mib,
                                        progress=progress)
        except BaseException:
            # A VM that booted but never got ready is kept (its log tells why): so is its row.
            if self.svc.store.find_vm(name) is None:
                self.store.delete(name)
            raise
        return row, record

    def check_new(self, name: str) -> None:
        """Refuse a project that cannot be created (bad or taken name); cheap."""
        validate_name(name, what="project")
        if self.store.find(name) is not None:
            raise AlreadyExists(f"a project named '{name}' exists already")
        self.svc.check_new(name)

    def create(self, name: str, repo: str | None = None, memory_mib: int | None = None,
               progress: Progress | None = None) -> CreateResult:
        """A project VM, empty or holding a clone of ``repo`` (history included).

        The repository is cloned on the host before the VM boots, so a bad URL
        fails at once; its README and file summaries become document memories.
        """
        self.check_new(name)
        source = gitrepo.source_url(repo) if repo else ""
        with self._scratch() as scratch:
            clone = gitrepo.clone_source(source, scratch / "src") if source else None
            branch = gitrepo.current_branch(clone) if clone else "main"
            kind = SourceKind.REPO if source else SourceKind.EMPTY
            row, record = self._new_project(name, kind, source, branch, memory_mib, progress)
            remote = self._remote(record)
            if clone is None:
                init_remote_repo(remote, branch)
                return CreateResult(row, None, 0, MemoryReport())
            if progress:
                progress(f"importing {source} ({branch}) into the VM")
            try:
                head = import_bundle(remote, gitrepo.bundle(clone, scratch / "in.bundle", branch),
                                     branch)
            except BaseException:
                self.delete(name)  # a project without its repository is of no use: all or nothing
                raise
            files = [f for f in clone.git.ls_files("-z").split("\0") if f]  # -z: unquoted
            items = memories.repo_memories(scratch / "src", files, name, source)
            if progress:
                progress(f"storing {len(items)} document memories")
            report = memories.store(self.svc.agent(record), items, self.memory_wait_s)
        return CreateResult(row, head, len(files), report)

    def promote(self, session_id: UUID, project: str, memory_mib: int | None = None,
                progress: Progress | None = None) -> PromoteResult:
        """Turn a dev session into commits in ``project`` (created if missing); mark it promoted.

        One commit per code-changing event, oldest first, with the prompt in the
        message; they go on top of whatever the project's repository holds.
        """
        session = self.sessions.get_session(session_id)
        if session.promoted_to_project_id:
            raise Conflict(f"dev session {str(session_id)[:8]} is already promoted into project "
                           f"'{session.promoted_to_project_id}'")
        transition_event(session.status, DevSessionStatus.PROMOTED)  # refuse before any work
        steps = self.sessions.commit_plan(session_id)
        if not steps:
            raise Conflict(f"dev session {str(session_id)[:8]} has no code yet; "
                           "nothing to promote")
        row = self.store.find(project)
        created = row is None
        if row is None:
            validate_name(project, what="project")
            vm = self.svc.store.find_vm(project)
            if vm is None:
                row, record = self._new_project(project, SourceKind.SESSION, str(session_id),
                                                "main", memory_mib, progress)
            elif vm.subsystem is not Subsystem.PROJECT:
                raise AlreadyExists(f"VM '{project}' exists and is a {vm.subsystem.value} VM, "
                                    "not a project")
            else:  # a project VM made with 'somnus vm create': adopt it
                row = self.store.add(ProjectRow(name=project, vm_name=project,
                                                source_kind=SourceKind.SESSION,
                                                source=str(session_id)))
                record = self._running(row, progress)
        else:
            record = self._running(self._active(project), progress)
        shas = self._commit_on_vm(record, row, lambda repo: gitrepo.commit_steps(repo, steps),
                                  f"building {len(steps)} commits on the host", progress)
        sid = str(session_id)
        self.store.add_commits([
            ProjectCommitRow(project=project, sha=sha, kind=CommitKind.AI,
                             subject=_subject(step.message), dev_session_id=sid,
                             event_id=step.event_id)
            for sha, step in zip(shas, steps, strict=True)])
        notice = self.sessions.undo_notice(session_id)
        promoted = self.sessions.set_status(
            session_id, DevSessionStatus.PROMOTED, project_id=project,
            note=f"promoted into project '{project}' as {len(shas)} commits")
        if progress:
            progress("moving the session into the project's memory")
        items = memories.session_memories(promoted, project, notice)
        report = memories.store(self.svc.agent(record), items, self.memory_wait_s)
        return PromoteResult(project, session_id, created, shas, report)

    def head_files(self, project: str, progress: Progress | None = None) -> dict[str, bytes]:
        """Every file tracked at the project's HEAD, by path (read through a bundle)."""
        row = self._active(project)
        remote = self._remote(self._running(row, progress))
        state = repo_state(remote)
        if not state.head:
            raise Conflict(f"project '{project}' has no commits yet")
        if not state.branch:
            raise Conflict(f"project '{project}' has a detached HEAD; check out a branch first")
        with self._scratch() as scratch:
            source = export_bundle(remote, state.branch, scratch / "vm.bundle")
            repo = Repo.clone_from(str(source), scratch / "repo", branch=state.branch)
            root = Path(repo.working_tree_dir or ".")
            return {path: (root / path).read_bytes() for path in repo.git.ls_files().splitlines()
                    if (root / path).is_file()}

    # -- reading the repository (the app's projects view) --------------------------------

    def _reading(self, project: str) -> Remote:
        """The project's repository, if its VM runs now: a read never brings a VM forward
        (that would swap the user's foreground out from under them)."""
        row = self._active(project)
        record = self.svc.store.get_vm(row.vm_name)
        if self.svc.observe(record).state is not VMState.RUNNING:
            raise Conflict(f"project '{project}' is not in front: bring its VM forward first "
                           f"('somnus activate {record.name}')")
        return self._remote(record)

    def tree(self, project: str) -> browse.RepoTree:
        return browse.tree(self._reading(project))

    def read_file(self, project: str, path: str) -> browse.FileView:
        return browse.read_file(self._reading(project), path)

    def log(self, project: str, limit: int = 50) -> list[browse.CommitLine]:
        kinds = {c.sha: c.kind.value for c in self.store.commits(project)}
        return browse.log(self._reading(project), limit, kinds)

    def commit(self, project: str, sha: str) -> browse.CommitDiff:
        return browse.commit(self._reading(project), sha)

    def commit_files(self, project: str, files: dict[str, bytes], message: str,
                     progress: Progress | None = None) -> str:
        """One commit by Somnus AI adding or changing ``files`` in the project's repository
        (on top of its branch); recorded as an AI commit, so it can be undone."""
        row = self._active(project)
        record = self._running(row, progress)
        when = utcnow()
        (sha,) = self._commit_on_vm(
            record, row, lambda repo: [gitrepo.commit_files(repo, files, message, when)],
            "building the commit on the host", progress)
        self.store.add_commits([ProjectCommitRow(project=project, sha=sha, kind=CommitKind.AI,
                                                 subject=_subject(message))])
        return sha

    def _commit_on_vm(self, record: VMRecord, row: ProjectRow,
                      build: Callable[[Repo], list[str]], note: str,
                      progress: Progress | None) -> list[str]:
        """Commits made on the host (``build``) on top of the VM's branch, sent back as a
        bundle; the VM's repository must be clean. Returns the new commits' hashes."""
        project = row.name
        remote = self._remote(record)
        state = repo_state(remote)
        require_clean(state, project)
        if state.head and not state.branch:
            raise Conflict(f"project '{project}' has a detached HEAD; check out a branch first")
        branch = state.branch or row.branch
        if progress:
            progress(note)
        with self._scratch() as scratch:
            if state.head:
                # Build on the VM's own history: fetch it, add the commits, send back the new ones.
                source = export_bundle(remote, branch, scratch / "vm.bundle")
                repo = Repo.clone_from(str(source), scratch / "repo", branch=branch)
            else:
                repo = gitrepo.init_repo(scratch / "repo", branch)
            shas = build(repo)
            head = import_bundle(remote, gitrepo.bundle(repo, scratch / "in.bundle", branch,
                                                        base=state.head), branch)
        if head != shas[-1]:
            raise GuestError(f"the VM's repository ended at {head[:8]}, not at {shas[-1][:8]}")
        return shas

    # -- git as the version store -------------------------------------------------------

    def undo(self, name: str, progress: Progress | None = None) -> UndoResult:
        """Revert the last AI commit not yet undone, as a new commit; tell the model."""
        row = self._active(name)
        record = self._running(row, progress)
        remote = self._remote(record)
        target = find_target(remote, {c.sha: c for c in self.store.commits(name)})
        sha = revert(remote, target)
        self.store.add_commits([ProjectCommitRow(project=name, sha=sha, kind=CommitKind.UNDO,
                                                 subject=f'Undo "{target.subject}"',
                                                 reverts=target.sha)])
        note = undo_note(name, target, sha)
        # Notes pile up until a chat turn delivers them (orchestrator.chat).
        pending = self.store.get(name).pending_note
        self.store.update(name, pending_note=f"{pending}\n{note}" if pending else note)
        report = memories.store(self.svc.agent(record), [memories.system_event(note, name)],
                                self.memory_wait_s)
        return UndoResult(name, target, sha, report)

    # -- access -------------------------------------------------------------------------

    def ssh_argv(self, name: str, command: list[str] | None = None,
                 progress: Progress | None = None) -> list[str]:
        """OpenSSH into the project folder: a login shell, or ``command`` run there."""
        row = self._active(name)
        self._running(row, progress)
        cd = f"cd {REPO_DIR}"
        if command:
            return self.svc.ssh_argv(row.vm_name, [cd, "&&", *command])
        argv = self.svc.ssh_argv(row.vm_name, [f'{cd} && exec "$SHELL" -l'])
        return [argv[0], "-t", *argv[1:]]  # a terminal for the interactive shell

    def ssh_config(self, name: str | None = None) -> str:
        rows = [self.store.get(name)] if name else self.store.list_projects()
        entries = []
        for row in rows:
            record = self.svc.store.find_vm(row.vm_name)
            if record is not None:
                entries.append(render_entry(row.name, self.svc.ssh_target(record)))
        return "\n".join(entries)

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(self, name: str, snapshot: str, description: str = "") -> SnapshotInfo:
        row = self._active(name)
        self.store.touch(name)
        return self.svc.snapshot_create(row.vm_name, snapshot, description)

    def rollback(self, name: str, snapshot: str) -> VMState:
        """Return the project VM, repository included, to ``snapshot``."""
        row = self._active(name)
        self.store.touch(name)
        return self.svc.snapshot_revert(row.vm_name, snapshot)

    # -- stale projects -----------------------------------------------------------------

    def archive(self, name: str) -> ArchiveResult:
        """Stop the VM and compact its disk overlay; the project stays restorable."""
        row = self._active(name)
        with self.svc.changing():
            record = self.svc.store.get_vm(row.vm_name)
            self._shut_down(record)
            snapshots = self.svc.snapshot_list(record.name)
            if snapshots:
                result = ArchiveResult(name, False, note=f"disk not compacted: its "
                                       f"{len(snapshots)} snapshot(s) would be lost")
            else:
                before, after = compact_overlay(self.svc.paths(record.name).overlay)
                result = ArchiveResult(name, True, before, after)
            self.store.update(name, archived=True, archived_at=utcnow())
        return result

    def _shut_down(self, record: VMRecord) -> None:
        """A clean shutdown from any tier, so the disk is consistent before compaction."""
        lifecycle = self.svc.lifecycle
        live = lifecycle.domain_state(record)
        if live is VMState.SAVED:
            # Restore, so the guest can shut down and flush its disk.
            lifecycle.restore(record, "archive: restored to shut down")
        elif live is VMState.PAUSED:
            lifecycle.resume(record, "archive: resumed to shut down")
        if self.svc.hv.is_active(record.domain_name):
            with suppress(GuestError):
                self.svc.agent(record).flush()
        self.svc.stop(record.name)

    def restore(self, name: str, start: bool = True, progress: Progress | None = None) -> None:
        row = self.store.get(name)
        if not row.archived:
            raise Conflict(f"project '{name}' is not archived")
        row = self.store.update(name, archived=False, archived_at=None, last_used=utcnow())
        if start:
            self._running(row, progress)

    def delete(self, name: str) -> None:
        """The project's VM (disk, snapshots, memory) and its records."""
        row = self.store.get(name)
        if self.svc.store.find_vm(row.vm_name) is not None:
            self.svc.delete(row.vm_name)
        self.store.delete(name)

    def gc(self, dry_run: bool = False, older_than_days: float | None = None) -> GcPlan:
        """Find (and unless ``dry_run``, remove) what stale projects left behind."""
        older = timedelta(days=older_than_days) if older_than_days is not None else None
        plan = plan_gc(self.store.list_projects(), {r.name for r in self.svc.store.list_vms()},
                       self.temp_dir, utcnow(), older)
        if dry_run:
            return plan
        for name in plan.orphan_records:
            self.store.delete(name)
        for path in plan.stale_temp:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for name in plan.expired:
            self.delete(name)
        return plan
