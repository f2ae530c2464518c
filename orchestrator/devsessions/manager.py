"""The dev session service: sessions, chat turns, versioned code blocks, rollback, status.

Every change is written to SQLite before the method returns; the in-memory cache
only saves re-reading. A cached session is used only while its newest event id
matches the database's, so changes made by another process are never missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

from core.errors import Conflict, InvalidInput, NotFound
from orchestrator.devsessions.cache import SessionCache
from orchestrator.devsessions.diffs import unified_diff
from orchestrator.devsessions.fences import Fence, parse_fences, render_fence
from orchestrator.devsessions.languages import language_for_path, normalize_language, safe_path
from orchestrator.devsessions.logs import session_log
from orchestrator.devsessions.models import (
    DEFAULT_TITLE,
    MAX_EVENT_CONTENT,
    MAX_TITLE,
    BlockChange,
    CodeBlock,
    DevSession,
    DevSessionEvent,
    DevSessionHeader,
    DevSessionStatus,
    SessionSummary,
    TurnResult,
    utcnow,
)
from orchestrator.devsessions.models import DevSessionEventType as E
from orchestrator.devsessions.plan import CommitStep, block_paths, commit_plan
from orchestrator.devsessions.store import DevSessionStore, SessionWriter
from orchestrator.devsessions.transitions import ENDED, transition_event

S = DevSessionStatus
EDITABLE = frozenset({S.ACTIVE})  # code changes need an active session
NOT_FINAL = frozenset({S.ACTIVE, S.PAUSED, S.COMPLETED})
CACHED = frozenset({S.ACTIVE, S.PAUSED})


class DevSessionManager:
    """Creates, changes and reads dev sessions; the one API the CLI and chat use."""

    def __init__(self, store: DevSessionStore, *, cache_max_sessions: int = 32,
                 cache_idle_s: float = 1800.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cache = SessionCache(cache_max_sessions, cache_idle_s, clock)

    # ----- sessions -----

    def create_session(self, user_id: str, *, title: str = DEFAULT_TITLE,
                       chat_session_id: UUID | None = None) -> DevSession:
        if not user_id.strip():
            raise InvalidInput("a dev session needs a user id")
        now = utcnow()
        header = DevSessionHeader(chat_session_id=chat_session_id or uuid4(),
                                  user_id=user_id.strip(), title=_title(title),
                                  start_time=now, last_activity=now)
        session = self._remember(
            self.store.create(header, {"chat_session_id": str(header.chat_session_id)}))
        session_log(session).info("dev session created: %s", session.title)
        return session

    def get_session(self, session_id: UUID) -> DevSession:
        newest = self.store.last_event_id(session_id)
        if newest is None:
            raise NotFound(f"no dev session {session_id} (see 'somnus session list')")
        cached = self.cache.get(session_id)
        if cached is not None and cached.last_event_id == newest:
            return _detached(cached)
        session = self.store.load(session_id)
        assert session is not None  # it has events, so it exists: sessions are never deleted
        return self._remember(session)

    def list_sessions(self, user_id: str | None = None,
                      status: DevSessionStatus | None = None) -> list[DevSessionHeader]:
        """Sessions without their logs, newest first."""
        return self.store.list_sessions(user_id, status)

    def resolve_session_id(self, ref: str) -> UUID:
        """The session whose id is or starts with ``ref``."""
        return _unique_match(ref, self.store.session_ids(), "dev session",
                             "see 'somnus session list'")

    def resolve_block_id(self, session_id: UUID, ref: str) -> UUID:
        """A block of the session named by its path (see :func:`block_paths`) or id prefix."""
        session = self.get_session(session_id)
        for block_id, path in block_paths(session).items():
            if path == ref:
                return block_id
        return _unique_match(ref, list(session.code_blocks), "code block",
                             f"see 'somnus session show {_short(session_id)}'")

    def set_status(self, session_id: UUID, status: DevSessionStatus, *,
                   project_id: str | None = None, note: str = "") -> DevSession:
        """Move the session to ``status`` if allowed, recording the event.

        ``project_id`` is required for, and only for, promotion.
        """
        if (status == S.PROMOTED) != bool(project_id):
            raise InvalidInput("a project id is needed to promote a dev session, and only then")
        with self._change(session_id, frozenset(S)) as w:
            current = w.session.status
            event_type = transition_event(current, status)
            fields: dict[str, Any] = {"status": status}
            if status in ENDED and w.session.end_time is None:
                fields["end_time"] = w.now
            if project_id:
                fields["promoted_to_project_id"] = project_id
            w.update(**fields)
            w.event(event_type, _clip(note),
                    {"from_status": current.value, "to_status": status.value}
                    | ({"project_id": project_id} if project_id else {}))
        session_log(w.session).info("dev session %s -> %s", current.value, status.value)
        return self._remember(w.result())

    def set_title(self, session_id: UUID, title: str) -> DevSession:
        title = _title(title)
        with self._change(session_id, NOT_FINAL) as w:
            if title != w.session.title:
                w.update(title=title)
                w.event(E.TITLE_CHANGED, title, {"old_title": w.session.title})
        return self._remember(w.result())

    def record_feedback(self, session_id: UUID, text: str) -> DevSessionEvent:
        _check_length(text, "feedback")
        with self._change(session_id, NOT_FINAL) as w:
            event = w.event(E.USER_FEEDBACK, text)
        return event

    def get_summary(self, session_id: UUID) -> SessionSummary:
        return self.get_session(session_id).get_summary()

    # ----- chat turns and code blocks -----

    def record_turn(self, session_id: UUID, prompt: str, answer: str, *,
                    target_block_id: UUID | None = None) -> TurnResult:
        """Record a prompt and the model's answer; the answer's code fences become blocks.

        A fence revises an existing block, as a new version, when it names that
        block's file, or when it has no file name, has the language of
        ``target_block_id`` and is the first such fence. Other fences are new blocks.
        """
        _check_length(prompt, "prompt")
        _check_length(answer, "answer")
        fences = parse_fences(answer)
        with self._change(session_id, EDITABLE) as w:
            target = _owned(w.session, target_block_id) if target_block_id else None
            asked = w.event(E.USER_PROMPT, prompt)
            answered = w.event(E.AI_RESPONSE, answer,
                               {"prompt_event_id": asked.event_id, "fences": len(fences)})
            origin = {"prompt_event_id": asked.event_id, "response_event_id": answered.event_id}
            changes = []
            for fence in fences:
                block = _revised_block(w.blocks, fence, target)
                if target is not None and block is not None and block.block_id == target.block_id:
                    target = None  # an explicit target takes one revision per turn
                change = _write_block(w, block, fence.content, language=fence.language,
                                      filename=fence.filename, metadata=origin)
                if change is not None:
                    changes.append(change)
        result = TurnResult(prompt_event=asked, response_event=answered, changes=changes)
        session_log(w.session).info("turn recorded: %d fences, %d block changes",
                                    len(fences), len(changes))
        return result

    def add_code_block(self, session_id: UUID, language: str, content: str, *,
                       filename: str | None = None) -> BlockChange:
        """A new block outside a chat turn (e.g. pasted by the user)."""
        path = None
        if filename is not None and (path := safe_path(filename)) is None:
            raise InvalidInput(f"'{filename}' is not a usable relative file path")
        if not content.strip():
            raise InvalidInput("a code block needs some content")
        language = normalize_language(language)
        if language == "text" and path:
            language = language_for_path(path) or language
        with self._change(session_id, EDITABLE) as w:
            clash = next((b for b in w.blocks.values() if path and b.filename == path), None)
            if clash is not None:
                raise Conflict(f"{path} exists already as block {_short(clash.block_id)}; "
                               "update that block instead")
            change = _write_block(w, None, content, language=language, filename=path,
                                  metadata={})
        assert change is not None  # new, non-empty content always differs from nothing
        session_log(w.session).info("code block %s created", change.block.label)
        return change

    def update_code_block(self, session_id: UUID, block_id: UUID, content: str) -> str:
        """Store ``content`` as the block's next version; the unified diff ("" if unchanged)."""
        with self._change(session_id, EDITABLE) as w:
            change = _write_block(w, _owned(w.session, block_id), content, metadata={})
        if change is None:
            return ""
        session_log(w.session).info("code block %s now at version %d", change.block.label,
                                    change.block.version)
        return change.diff

    def get_code_block(self, session_id: UUID, block_id: UUID,
                       version: int | None = None) -> CodeBlock:
        """The block at ``version`` (default: the latest)."""
        block = _owned(self.get_session(session_id), block_id)
        if version is None or version == block.version:
            return block
        stored = self.store.version(block_id, version) if 1 <= version < block.version else None
        if stored is None:
            raise NotFound(f"{block.label} has no version {version} (it has 1 to {block.version})")
        return block.model_copy(update={"content": stored.content, "version": version,
                                        "last_modified": stored.created_at})

    def diff_code_block(self, session_id: UUID, block_id: UUID, from_version: int | None = None,
                        to_version: int | None = None) -> str:
        """Diff between two versions (default: the previous and the latest); 0 is "no file"."""
        latest = self.get_code_block(session_id, block_id)
        new = latest.version if to_version is None else to_version
        old = new - 1 if from_version is None else from_version

        def content(version: int) -> str:
            return "" if version == 0 else self.get_code_block(session_id, block_id,
                                                               version).content

        return unified_diff(content(old), content(new), latest.label)

    def rollback_code_block(self, session_id: UUID, block_id: UUID,
                            to_version: int) -> BlockChange:
        """Make version ``to_version``'s content the next version; nothing is deleted."""
        restored = self.get_code_block(session_id, block_id, to_version)
        with self._change(session_id, EDITABLE) as w:
            block = _owned(w.session, block_id)
            change = _write_block(w, block, restored.content, event_type=E.CODE_BLOCK_ROLLED_BACK,
                                  metadata={"restored_version": to_version})
        if change is None:
            raise Conflict(f"{block.label} already has the content of version {to_version} "
                           f"(it is at version {block.version}); nothing to roll back")
        session_log(w.session).info("code block %s rolled back to version %d (now %d)",
                                    block.label, to_version, change.block.version)
        return change

    # ----- exports for chat and promotion -----

    def commit_plan(self, session_id: UUID) -> list[CommitStep]:
        """The session's code history as ordered commits (see :mod:`plan`)."""
        session = self.get_session(session_id)
        # Another process may have added versions since; keep the plan consistent with the log.
        history = [v for v in self.store.history(session_id)
                   if v.event_id <= session.last_event_id]
        return commit_plan(session, history)

    def undo_notice(self, session_id: UUID) -> str | None:
        """What to tell the model about rollbacks since its last answer, else None.

        Without it a model re-applies the change it no longer sees undone.
        """
        session = self.get_session(session_id)
        rollbacks: list[DevSessionEvent] = []
        for event in reversed(session.event_log):
            if event.event_type == E.AI_RESPONSE:
                break
            if event.event_type == E.CODE_BLOCK_ROLLED_BACK:
                rollbacks.append(event)
        if not rollbacks:
            return None
        paths = block_paths(session)
        lines = ["Since your last answer the user rolled back code you wrote; "
                 "do not re-apply the undone changes unless asked to."]
        touched: dict[UUID, CodeBlock] = {}
        for event in reversed(rollbacks):
            assert event.target_block_id is not None  # code events always name their block
            block = session.code_blocks[event.target_block_id]
            touched[block.block_id] = block
            lines.append(f"- {paths[block.block_id]}: back to version "
                         f"{event.metadata['restored_version']} (saved as version "
                         f"{event.metadata['version']})")
        lines.append("Current content:")
        lines += [render_fence(b.language, b.content, paths[b.block_id]) for b in touched.values()]
        return "\n".join(lines)

    # ----- internals -----

    @contextmanager
    def _change(self, session_id: UUID, allowed: Collection[DevSessionStatus]
                ) -> Iterator[SessionWriter]:
        """A writer on fresh state, refused unless the session's status is in ``allowed``."""
        session = self.get_session(session_id)
        if session.status not in allowed:
            raise Conflict(_refusal(session))
        with self.store.write(session) as writer:
            yield writer
        self._remember(writer.result())

    def _remember(self, session: DevSession) -> DevSession:
        """Cache ``session`` if it is open; a copy of it that is safe to hand out."""
        # Only open sessions are worth keeping in memory; ended ones are rarely read.
        if session.status in CACHED:
            self.cache.put(session)
        else:
            self.cache.discard(session.dev_session_id)
        return _detached(session)


def _detached(session: DevSession) -> DevSession:
    # Snapshots are frozen, but their list and dict are not: callers get their own, so
    # nothing they do can change the cached copy.
    return session.model_copy(update={"event_log": list(session.event_log),
                                      "code_blocks": dict(session.code_blocks)})


def _write_block(w: SessionWriter, block: CodeBlock | None, content: str, *, language: str = "",
                 filename: str | None = None, event_type: E | None = None,
                 metadata: dict[str, Any]) -> BlockChange | None:
    """Record ``content`` as a new block or as ``block``'s next version; None if unchanged."""
    if block is None:
        new = CodeBlock(block_id=uuid4(), language=language, filename=filename, content=content,
                        created_at=w.now, last_modified=w.now)
        event_type = E.CODE_BLOCK_CREATED
    else:
        new = block.model_copy(update={"content": content, "version": block.version + 1,
                                       "last_modified": w.now})
        event_type = event_type or E.CODE_BLOCK_MODIFIED
    diff = unified_diff(block.content if block else "", content, new.label)
    if not diff:
        return None
    meta = {**metadata, "version": new.version, "language": new.language,
            "filename": new.filename}
    if block is not None:
        meta["previous_version"] = block.version
    event = w.event(event_type, _clip(diff), meta, new.block_id)
    w.save_block(new, event.event_id)
    return BlockChange(block=new, event=event, diff=diff)


def _revised_block(blocks: dict[UUID, CodeBlock], fence: Fence,
                   target: CodeBlock | None) -> CodeBlock | None:
    if fence.filename is not None:
        return next((b for b in blocks.values() if b.filename == fence.filename), None)
    if target is not None and fence.language == target.language:
        return blocks[target.block_id]
    return None


def _owned(session: DevSession, block_id: UUID) -> CodeBlock:
    block = session.code_blocks.get(block_id)
    if block is None:
        raise NotFound(f"dev session {_short(session.dev_session_id)} has no code block {block_id}")
    return block


def _refusal(session: DevSession) -> str:
    short = _short(session.dev_session_id)
    if session.status == S.PAUSED:
        return f"dev session {short} is paused; resume it first ('somnus session resume {short}')"
    if session.status == S.COMPLETED:
        return f"dev session {short} is completed; its code can no longer change"
    return f"dev session {short} is {session.status.value}; it accepts no more changes"


def _unique_match(ref: str, ids: list[UUID], what: str, hint: str) -> UUID:
    ref = ref.strip().lower()
    matches = [i for i in ids if str(i).startswith(ref)] if ref else []
    if not matches:
        raise NotFound(f"no {what} matches '{ref}' ({hint})")
    if len(matches) > 1:
        raise InvalidInput(f"'{ref}' matches {len(matches)} {what}s; give more of the id")
    return matches[0]


def _title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise InvalidInput("a dev session title must not be empty")
    if len(title) > MAX_TITLE:
        raise InvalidInput(f"title has {len(title)} characters; at most {MAX_TITLE} are allowed")
    return title


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_EVENT_CONTENT:
        raise InvalidInput(f"{what} has {len(text):,} characters; "
                           f"at most {MAX_EVENT_CONTENT:,} are recorded")


def _clip(text: str) -> str:
    """Event content within its limit; diffs lose nothing, as every version is stored whole."""
    if len(text) <= MAX_EVENT_CONTENT:
        return text
    note = f"\n[truncated: {len(text):,} characters; the block versions hold everything]\n"
    return text[:MAX_EVENT_CONTENT - len(note)] + note


def _short(session_id: UUID) -> str:
    return str(session_id)[:8]
