"""What a project VM's memory learns: a promoted session's turns and code, a repo's files.

Stored through the agent's memory API, best effort: each item that fails is
reported, and nothing else is held up by it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import GuestError
from guest_agent.protocol import (
    AgentStatus,
    MemoryCreate,
    MemoryImportance,
    MemoryScope,
    MemoryType,
)
from orchestrator.agent_client import AgentClient
from orchestrator.devsessions import DevSession, DevSessionEventType, block_paths

README_NAMES = ("README.md", "README.rst", "README.txt", "README", "readme.md")
MAX_MEMORY_CHARS = 8000  # one memory; embeddings see far less, the prompt may see it all
SUMMARY_CHUNK_CHARS = 3000  # file summaries per memory: a few dozen files each
MAX_SUMMARY_FILES = 400
FIRST_LINES = 3
# The retry is safe: the agent deduplicates by content hash.
ATTEMPTS = 2
Metadata = dict[str, str | int | float | bool | None]


@dataclass
class MemoryReport:
    """What reached the VM's memory."""

    wanted: int = 0
    stored: int = 0
    deduplicated: int = 0
    embedding_pending: int = 0  # stored; searchable once the VM has embedded them
    failed: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.stored}/{self.wanted} memories stored"
        if self.deduplicated:
            text += f" ({self.deduplicated} already there)"
        if self.embedding_pending:
            text += f", {self.embedding_pending} being embedded in the VM"
        if self.failed:
            text += f"; {len(self.failed)} failed: {self.failed[0]}"
        return text


def _clip(text: str, limit: int = MAX_MEMORY_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 20] + "\n[… truncated]"


def session_memories(session: DevSession, project: str,
                     undo_notice: str | None = None) -> list[MemoryCreate]:
    """A summary, each prompt with its answer, and each block's latest code."""
    sid = str(session.dev_session_id)
    base: Metadata = {"dev_session_id": sid, "project": project}
    tags = ["dev-session", project]
    summary = session.get_summary()
    languages = ", ".join(f"{lang} ({s.blocks} blocks, {s.lines} lines)"
                          for lang, s in summary.languages.items()) or "no code"
    items = [MemoryCreate(
        content=(f"Dev session '{session.title}' ({sid[:8]}) was promoted into project "
                 f"'{project}': {summary.event_count} events, {summary.block_count} code "
                 f"blocks: {languages}. Its code history is the project's git log."),
        memory_type=MemoryType.DEV_SESSION, importance=MemoryImportance.HIGH,
        scope=MemoryScope.SHARED, tags=tags, metadata=base)]
    events = {e.event_id: e for e in session.event_log}
    for event in session.event_log:
        if event.event_type != DevSessionEventType.AI_RESPONSE:
            continue
        prompt = events.get(event.metadata.get("prompt_event_id", -1))
        asked = prompt.content.strip() if prompt else "(no prompt recorded)"
        items.append(MemoryCreate(
            content=_clip(f"Dev session turn in '{session.title}'.\nUser: {asked}\n"
                          f"Assistant: {event.content.strip()}"),
            memory_type=MemoryType.DEV_SESSION, tags=tags,
            metadata={**base, "event_id": event.event_id}))
    paths = block_paths(session)
    for block in session.code_blocks.values():
        path = paths[block.block_id]
        items.append(MemoryCreate(
            content=_clip(f"Code of {path} ({block.language}, version {block.version}) in "
                          f"project '{project}':\n```{block.language}\n{block.content}\n```"),
            memory_type=MemoryType.CODE_SNIPPET, tags=[*tags, "code"],
            metadata={**base, "path": path, "version": block.version,
                      "language": block.language}))
    if undo_notice:
        items.append(system_event(undo_notice, project))
    return items


def system_event(text: str, project: str) -> MemoryCreate:
    """A note the model must see (undos): high importance, tagged for the project."""
    return MemoryCreate(content=_clip(text), memory_type=MemoryType.SYSTEM_EVENT,
                        importance=MemoryImportance.HIGH, scope=MemoryScope.SHARED,
                        tags=["undo", project], metadata={"project": project})


def _first_lines(path: Path) -> str | None:
    """The first lines of a text file, None for binary files."""
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return None
    if b"\0" in head:
        return None
    lines = head.decode(errors="replace").splitlines()[:FIRST_LINES]
    return " | ".join(ln.strip()[:100] for ln in lines if ln.strip())


def repo_memories(root: Path, files: list[str], project: str, source: str) -> list[MemoryCreate]:
    """The README whole, and short summaries (path, size, first lines) of the files."""
    tags = ["repository", project]
    base: Metadata = {"project": project, "source": source}
    items = []
    readme = next((n for n in README_NAMES if n in files), None)
    if readme is not None:
        text = (root / readme).read_text(errors="replace").strip()
        if text:
            items.append(MemoryCreate(
                content=_clip(f"README of project '{project}' ({readme}, from {source}):\n{text}"),
                memory_type=MemoryType.DOCUMENT, importance=MemoryImportance.HIGH,
                scope=MemoryScope.SHARED, tags=[*tags, "readme"],
                metadata={**base, "path": readme}))
    lines = []
    for name in files[:MAX_SUMMARY_FILES]:
        path = root / name
        size = path.stat().st_size if path.is_file() else 0
        first = _first_lines(path)
        lines.append(f"- {name} ({size} bytes)" + (f": {first}" if first else
                                                   (" [binary]" if first is None else "")))
    if len(files) > MAX_SUMMARY_FILES:
        lines.append(f"- … and {len(files) - MAX_SUMMARY_FILES} more files")
    chunks: list[list[str]] = []
    for line in lines:
        if not chunks or sum(map(len, chunks[-1])) + len(line) > SUMMARY_CHUNK_CHARS:
            chunks.append([])
        chunks[-1].append(line)
    for n, chunk in enumerate(chunks, 1):
        items.append(MemoryCreate(
            content=(f"Files of project '{project}' (from {source}), part {n} of "
                     f"{len(chunks)}:\n" + "\n".join(chunk)),
            memory_type=MemoryType.DOCUMENT, scope=MemoryScope.SHARED,
            tags=[*tags, "file-summary"], metadata={**base, "part": n}))
    return items


def wait_model(agent: AgentClient, timeout_s: float) -> str | None:
    """Wait for the agent's model (memory needs its embeddings); None when ready, else why."""
    deadline = time.monotonic() + timeout_s
    why = "agent did not answer"
    while True:
        try:
            health = agent.health(timeout_s=5)
            if health.status is AgentStatus.OK:
                return None
            if health.status is AgentStatus.ERROR:
                return f"agent model failed: {health.error}"
            why = "agent model still loading"
        except GuestError as exc:
            why = str(exc)
        if time.monotonic() >= deadline:
            return why
        time.sleep(2)


def store(agent: AgentClient, items: list[MemoryCreate], wait_s: float) -> MemoryReport:
    """Add ``items`` one by one; failures are counted, not raised.

    They are embedded in the VM's background: under TCG a document takes minutes to
    embed, and the user should not wait for that to use the project.
    """
    report = MemoryReport(wanted=len(items))
    if not items:
        return report
    not_ready = wait_model(agent, wait_s)
    if not_ready is not None:
        report.failed = [not_ready] * len(items)
        return report
    for item in items:
        added = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                added = agent.memory_add(item, background=True)
                break
            except GuestError as exc:
                if attempt == ATTEMPTS:
                    report.failed.append(str(exc))
        if added is not None:
            report.stored += 1
            report.deduplicated += added.deduplicated
            report.embedding_pending += added.embedding_pending
    return report
