"""Projects: one VM each, holding a git repository that Somnus fills and can undo.

Public API: :class:`ProjectService` (the service), the tables in :mod:`.tables`,
and the pure helpers the CLI and tests use.
"""

from orchestrator.projects.housekeeping import GcPlan, compact_overlay, plan_gc
from orchestrator.projects.memories import MemoryReport
from orchestrator.projects.remote import REPO_DIR, Remote, RepoState, SSHRemote
from orchestrator.projects.service import (
    ArchiveResult,
    CreateResult,
    ProjectInfo,
    ProjectService,
    ProjectView,
    PromoteResult,
    UndoResult,
)
from orchestrator.projects.sshconfig import host_alias, render_entry
from orchestrator.projects.tables import (
    CommitKind,
    ProjectCommitRow,
    ProjectRow,
    ProjectStore,
    SourceKind,
)

__all__ = [
    "REPO_DIR",
    "ArchiveResult",
    "CommitKind",
    "CreateResult",
    "GcPlan",
    "MemoryReport",
    "ProjectCommitRow",
    "ProjectInfo",
    "ProjectRow",
    "ProjectService",
    "ProjectStore",
    "ProjectView",
    "PromoteResult",
    "Remote",
    "RepoState",
    "SSHRemote",
    "SourceKind",
    "UndoResult",
    "compact_overlay",
    "host_alias",
    "plan_gc",
    "render_entry",
]
