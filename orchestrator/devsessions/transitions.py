"""Which status changes a dev session allows, and the event each one records."""

from __future__ import annotations

from core.errors import Conflict
from orchestrator.devsessions.models import DevSessionEventType as E
from orchestrator.devsessions.models import DevSessionStatus as S

# Archived and promoted are final: a promoted session's history now lives in a project.
ALLOWED: dict[S, frozenset[S]] = {
    S.ACTIVE: frozenset({S.PAUSED, S.COMPLETED, S.ARCHIVED, S.PROMOTED}),
    S.PAUSED: frozenset({S.ACTIVE, S.COMPLETED, S.ARCHIVED, S.PROMOTED}),
    S.COMPLETED: frozenset({S.ARCHIVED, S.PROMOTED}),
    S.ARCHIVED: frozenset(),
    S.PROMOTED: frozenset(),
}

# Statuses that end a session: end_time is set when one is first reached.
ENDED = frozenset({S.COMPLETED, S.ARCHIVED, S.PROMOTED})

_EVENTS = {
    S.ACTIVE: E.SESSION_RESUMED,
    S.PAUSED: E.SESSION_PAUSED,
    S.COMPLETED: E.SESSION_COMPLETED,
    S.ARCHIVED: E.SESSION_ARCHIVED,
    S.PROMOTED: E.SESSION_PROMOTED,
}


def transition_event(current: S, target: S) -> E:
    """The event recording ``current -> target``; ``Conflict`` if that change is not allowed."""
    if target not in ALLOWED[current]:
        if current == target:
            raise Conflict(f"dev session is already {current.value}")
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current])) or "nothing (final)"
        raise Conflict(f"a {current.value} dev session cannot become {target.value} "
                       f"(allowed: {allowed})")
    return _EVENTS[target]
