"""Small types every layer shares."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# A progress callback: one human-readable line per step of a long operation.
Progress = Callable[[str], None]


def utcnow() -> datetime:
    """Now, timezone-aware UTC (what every stored timestamp uses)."""
    return datetime.now(UTC)
