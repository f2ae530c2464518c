"""A session's code history as commits: what promotion to a project repository replays."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from pydantic import BaseModel

from orchestrator.devsessions.languages import extension_for
from orchestrator.devsessions.models import (
    BlockVersion,
    DevSession,
    DevSessionEvent,
    DevSessionEventType,
    UtcDatetime,
)


class CommitStep(BaseModel):
    """One code-changing event as a commit.

    ``files`` is every file of the session after this step (so any step can be
    checked out alone); ``changed`` names the paths this step changed.
    """

    event_id: int
    event_type: DevSessionEventType
    timestamp: UtcDatetime
    message: str
    files: dict[str, str]
    changed: list[str]


def block_paths(session: DevSession) -> dict[UUID, str]:
    """A repository path for every block: its file name, else ``block-<n>.<ext>``.

    ``n`` counts unnamed blocks in creation order, skipping names already taken,
    so the paths are stable as long as the log is (it is append-only).
    """
    taken = {b.filename for b in session.code_blocks.values() if b.filename}
    paths: dict[UUID, str] = {}
    n = 0
    for block in session.code_blocks.values():
        if block.filename:
            paths[block.block_id] = block.filename
            continue
        while True:
            n += 1
            path = f"block-{n}.{extension_for(block.language)}"
            if path not in taken:
                break
        taken.add(path)
        paths[block.block_id] = path
    return paths


def commit_plan(session: DevSession, history: Sequence[BlockVersion]) -> list[CommitStep]:
    """One step per stored block version, oldest first, each with a commit message."""
    paths = block_paths(session)
    events = {e.event_id: e for e in session.event_log}
    files: dict[str, str] = {}
    steps = []
    for version in history:
        event = events[version.event_id]
        path = paths[version.block_id]
        files[path] = version.content
        steps.append(CommitStep(event_id=event.event_id, event_type=event.event_type,
                                timestamp=event.timestamp, files=dict(files), changed=[path],
                                message=_message(session, event, path, events)))
    return steps


def _message(session: DevSession, event: DevSessionEvent, path: str,
             events: dict[int, DevSessionEvent]) -> str:
    meta = event.metadata
    if event.event_type == DevSessionEventType.CODE_BLOCK_CREATED:
        subject = f"Add {path}"
    elif event.event_type == DevSessionEventType.CODE_BLOCK_ROLLED_BACK:
        subject = f"Roll back {path} to version {meta['restored_version']}"
    else:
        subject = f"Update {path} to version {meta['version']}"
    prompt = events.get(meta.get("prompt_event_id", -1))
    body = f"\n\nPrompt:\n{prompt.content.strip()}" if prompt else ""
    return (f"{subject}{body}\n\n"
            f"Dev-Session: {session.dev_session_id}\nDev-Session-Event: {event.event_id}\n")
