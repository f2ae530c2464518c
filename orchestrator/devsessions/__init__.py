"""Dev sessions: chat turns become versioned code blocks, ready to be promoted to a project.

Public API: :class:`DevSessionManager` (the service), the data model in
:mod:`.models`, :class:`CommitStep` for promotion, and the pure helpers
:func:`parse_fences` and :func:`unified_diff`.
"""

from orchestrator.devsessions.config import DevSessionSettings
from orchestrator.devsessions.diffs import unified_diff
from orchestrator.devsessions.fences import Fence, parse_fences
from orchestrator.devsessions.manager import DevSessionManager
from orchestrator.devsessions.models import (
    BlockChange,
    CodeBlock,
    DevSession,
    DevSessionEvent,
    DevSessionEventType,
    DevSessionHeader,
    DevSessionStatus,
    SessionSummary,
    TurnResult,
)
from orchestrator.devsessions.plan import CommitStep, block_paths
from orchestrator.devsessions.store import DevSessionStore

__all__ = [
    "BlockChange",
    "CodeBlock",
    "CommitStep",
    "DevSession",
    "DevSessionEvent",
    "DevSessionEventType",
    "DevSessionHeader",
    "DevSessionManager",
    "DevSessionSettings",
    "DevSessionStatus",
    "DevSessionStore",
    "Fence",
    "SessionSummary",
    "TurnResult",
    "block_paths",
    "parse_fences",
    "unified_diff",
]
