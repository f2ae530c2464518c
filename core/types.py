"""Small types every layer shares."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BeforeValidator

# A progress callback: one human-readable line per step of a long operation.
Progress = Callable[[str], None]


def utcnow() -> datetime:
    """Now, timezone-aware UTC (what every stored timestamp uses)."""
    return datetime.now(UTC)


def _whole(value: object) -> object:
    """JSON Schema's integer includes 3.0; pydantic's strict int does not: make it 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# With ``Strict()``: integers as JSON Schema has them (no bools, no strings, 3.0 allowed).
# Put the bounds before it, or the OpenAPI document gets pydantic's raw 'ge'/'le'.
WHOLE = BeforeValidator(_whole)
