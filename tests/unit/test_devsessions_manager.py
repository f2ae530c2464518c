"""The dev session service on a real SQLite file: versions, rollback, status, cache, export."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from core.config import Settings
from core.errors import Conflict, InvalidInput, NotFound
from orchestrator.database import open_database
from orchestrator.devsessions import (
    DevSession,
    DevSessionEventType,
    DevSessionManager,
    DevSessionStatus,
    DevSessionStore,
)
from orchestrator.devsessions.tables import DevSessionEventRow
from tests.fakes import fake_host
from tests.unit.test_devsessions_diffs import apply_patch

E = DevSessionEventType
S = DevSessionStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "somnus.db"


@pytest.fixture
def make_manager(db: Path) -> Iterator[Callable[..., DevSessionManager]]:
    """Each manager has its own engine on the one file, as a separate process would."""
    engines: list[Engine] = []

    def make(**options: Any) -> DevSessionManager:
        engines.append(open_database(db))
        return DevSessionManager(DevSessionStore(engines[-1]), **options)

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def m(make_manager: Callable[..., DevSessionManager]) -> DevSessionManager:
    return make_manager()


@pytest.fixture
def sid(m: DevSessionManager) -> UUID:
    return m.create_session("alice", title="demo").dev_session_id


def types(session: DevSession) -> list[E]:
    return [e.event_type for e in session.event_log]


def block_named(m: DevSessionManager, sid: UUID, filename: str) -> UUID:
    return next(
        b.block_id for b in m.get_session(sid).code_blocks.values() if b.filename == filename
    )


def versions_of(m: DevSessionManager, sid: UUID, block_id: UUID) -> list[str]:
    latest = m.get_code_block(sid, block_id).version
    return [m.get_code_block(sid, block_id, v).content for v in range(1, latest + 1)]


# ----- sessions -----


def test_new_session_has_the_original_defaults_and_a_start_event(m: DevSessionManager) -> None:
    session = m.create_session("bob")
    assert session.title == "Untitled Dev Session"
    assert session.status == S.ACTIVE
    assert session.end_time is None and session.promoted_to_project_id is None
    assert session.start_time == session.last_activity
    assert types(session) == [E.SESSION_START]
    assert session.event_log[0].metadata == {"chat_session_id": str(session.chat_session_id)}


@pytest.mark.parametrize(
    ("user", "title", "message"),
    [
        ("", "t", "user id"),
        ("u", "   ", "must not be empty"),
        ("u", "x" * 151, "151 characters; at most 150"),
    ],
)
def test_bad_session_input_is_refused(
    m: DevSessionManager, user: str, title: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        m.create_session(user, title=title)


def test_unknown_session_is_not_found(m: DevSessionManager) -> None:
    with pytest.raises(NotFound, match="no dev session"):
        m.get_session(UUID(int=1))


def test_ids_resolve_by_unique_prefix(m: DevSessionManager) -> None:
    ids = [m.create_session("u").dev_session_id for _ in range(17)]
    assert m.resolve_session_id(str(ids[0])[:13].upper()) == ids[0]
    # 17 ids over 16 hex digits: some first digit is shared.
    firsts = [str(i)[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(InvalidInput, match="give more of the id"):
        m.resolve_session_id(shared)
    with pytest.raises(NotFound):
        m.resolve_session_id("nothing")


# ----- chat turns -----


def test_turn_records_prompt_answer_and_blocks(m: DevSessionManager, sid: UUID) -> None:
    answer = "Two files:\n```python main.py\nprint(1)\n```\n```\n# file: notes.txt\nhi\n```\n"
    result = m.record_turn(sid, "make files", answer)
    session = m.get_session(sid)
    assert types(session)[1:] == [
        E.USER_PROMPT,
        E.AI_RESPONSE,
        E.CODE_BLOCK_CREATED,
        E.CODE_BLOCK_CREATED,
    ]
    assert result.prompt_event.content == "make files"
    assert result.response_event.content == answer
    assert [(c.block.filename, c.block.language, c.block.content) for c in result.changes] == [
        ("main.py", "python", "print(1)\n"),
        ("notes.txt", "text", "hi\n"),
    ]
    created = session.event_log[3]
    assert created.target_block_id == result.changes[0].block.block_id
    assert created.metadata["prompt_event_id"] == result.prompt_event.event_id
    assert created.content == result.changes[0].diff


def test_same_filename_in_a_later_answer_is_a_new_version(m: DevSessionManager, sid: UUID) -> None:
    m.record_turn(sid, "p1", "```python app.py\nx = 1\n```")
    result = m.record_turn(sid, "p2", "Fixed:\n```python\n# file: app.py\nx = 2\n```")
    [change] = result.changes
    assert change.block.version == 2
    assert change.event.event_type == E.CODE_BLOCK_MODIFIED
    assert change.event.metadata["previous_version"] == 1
    assert change.diff == "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    assert len(m.get_session(sid).code_blocks) == 1


def test_unnamed_fences_revise_only_an_explicit_target(m: DevSessionManager, sid: UUID) -> None:
    [first] = m.record_turn(sid, "p", "```python\na = 1\n```").changes
    target = first.block.block_id
    m.record_turn(sid, "p", "```python\nb = 1\n```")  # no target: a second block
    assert len(m.get_session(sid).code_blocks) == 2
    result = m.record_turn(
        sid,
        "p",
        "```js\nlet c\n```\n```python\na = 2\n```\n```python\nz = 0\n```",
        target_block_id=target,
    )
    assert [(c.block.language, c.block.version) for c in result.changes] == [
        ("javascript", 1),
        ("python", 2),
        ("python", 1),
    ]
    assert m.get_code_block(sid, target).content == "a = 2\n"


def test_repeating_a_block_unchanged_records_no_version(m: DevSessionManager, sid: UUID) -> None:
    m.record_turn(sid, "p", "```python a.py\nx = 1\n```")
    result = m.record_turn(sid, "again", "Same:\n```python a.py\nx = 1\n```")
    assert result.changes == []
    assert m.get_code_block(sid, block_named(m, sid, "a.py")).version == 1


def test_two_fences_of_one_file_in_one_answer_make_two_versions(
    m: DevSessionManager, sid: UUID
) -> None:
    result = m.record_turn(sid, "p", "```py a.py\nv1\n```\nthen\n```py a.py\nv2\n```")
    assert [c.block.version for c in result.changes] == [1, 2]


def test_target_block_must_belong_to_the_session(m: DevSessionManager, sid: UUID) -> None:
    other = m.create_session("eve").dev_session_id
    [change] = m.record_turn(other, "p", "```py\nx\n```").changes
    with pytest.raises(NotFound, match="has no code block"):
        m.record_turn(sid, "p", "```py\ny\n```", target_block_id=change.block.block_id)
    assert types(m.get_session(sid)) == [E.SESSION_START]  # nothing half-written


def test_oversized_prompt_is_refused_and_long_diffs_are_clipped(
    m: DevSessionManager, sid: UUID
) -> None:
    with pytest.raises(InvalidInput, match="at most 50,000"):
        m.record_turn(sid, "x" * 50_001, "")
    big = "".join(f"line {i}\n" for i in range(8000))
    change = m.add_code_block(sid, "text", big, filename="big.txt")
    assert len(change.event.content) <= 50_000 and "truncated" in change.event.content
    assert m.get_code_block(sid, change.block.block_id).content == big


# ----- versions, diffs, rollback -----


def test_update_returns_a_correct_diff_and_keeps_every_version(
    tmp_path: Path, m: DevSessionManager, sid: UUID
) -> None:
    block = m.add_code_block(sid, "python", "def f():\n    return 1\n").block
    contents = ["def f():\n    return 1\n", "def f():\n    return 2\n", "", "déjà vu\nno newline"]
    for old, new in itertools.pairwise(contents):
        diff = m.update_code_block(sid, block.block_id, new)
        assert diff.startswith("--- a/python\n+++ b/python\n")  # no filename: the language
        assert apply_patch(tmp_path, old, diff) == new
    assert m.update_code_block(sid, block.block_id, contents[-1]) == ""
    assert versions_of(m, sid, block.block_id) == contents
    modified = [e for e in m.get_session(sid).event_log if e.event_type == E.CODE_BLOCK_MODIFIED]
    assert [e.metadata["version"] for e in modified] == [2, 3, 4]


def test_diff_between_any_two_versions_applies(
    tmp_path: Path, m: DevSessionManager, sid: UUID
) -> None:
    contents = ["a\n", "a\nb\n", "b\nc", "", "c\n"]
    block_id = m.add_code_block(sid, "text", contents[0], filename="f.txt").block.block_id
    for content in contents[1:]:
        m.update_code_block(sid, block_id, content)
    with_empty = ["", *contents]  # version 0 is "no file yet"
    for old in range(len(with_empty)):
        for new in range(1, len(with_empty)):
            diff = m.diff_code_block(sid, block_id, old, new)
            assert (diff == "") == (with_empty[old] == with_empty[new])
            if diff:
                assert diff.startswith("--- a/f.txt\n+++ b/f.txt\n")
                assert apply_patch(tmp_path, with_empty[old], diff) == with_empty[new]
    assert m.diff_code_block(sid, block_id) == m.diff_code_block(sid, block_id, 4, 5)


def test_rollback_is_a_new_version_equal_to_the_old_one(m: DevSessionManager, sid: UUID) -> None:
    block_id = m.add_code_block(sid, "python", "v1\n", filename="m.py").block.block_id
    m.update_code_block(sid, block_id, "v2\n")
    m.update_code_block(sid, block_id, "v3\n")
    change = m.rollback_code_block(sid, block_id, 1)
    assert change.block.version == 4
    assert versions_of(m, sid, block_id) == ["v1\n", "v2\n", "v3\n", "v1\n"]
    event = m.get_session(sid).event_log[-1]
    assert event == change.event
    assert event.event_type == E.CODE_BLOCK_ROLLED_BACK
    assert event.target_block_id == block_id
    assert {
        "restored_version": 1,
        "version": 4,
        "previous_version": 3,
    }.items() <= event.metadata.items()
    assert event.content == "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-v3\n+v1\n"


@pytest.mark.parametrize(
    ("version", "error", "message"),
    [
        (0, NotFound, "has no version 0"),
        (9, NotFound, "has no version 9"),
        (3, Conflict, "already has the content of version 3"),  # the current version
        (1, Conflict, "already has the content of version 1"),  # same text as now
    ],
)
def test_pointless_or_impossible_rollbacks_are_refused(
    m: DevSessionManager, sid: UUID, version: int, error: type[Exception], message: str
) -> None:
    block_id = m.add_code_block(sid, "python", "same\n").block.block_id
    m.update_code_block(sid, block_id, "other\n")
    m.update_code_block(sid, block_id, "same\n")
    with pytest.raises(error, match=message):
        m.rollback_code_block(sid, block_id, version)
    assert m.get_code_block(sid, block_id).version == 3


def test_blocks_are_only_reachable_through_their_session(m: DevSessionManager, sid: UUID) -> None:
    other = m.create_session("eve").dev_session_id
    block_id = m.add_code_block(other, "python", "x\n").block.block_id
    with pytest.raises(NotFound):
        m.rollback_code_block(sid, block_id, 1)
    with pytest.raises(NotFound):
        m.get_code_block(sid, block_id)


def test_add_block_refuses_duplicate_and_unsafe_paths(m: DevSessionManager, sid: UUID) -> None:
    m.add_code_block(sid, "", "x\n", filename="pkg/a.py")
    assert m.get_session(sid).code_blocks.popitem()[1].language == "python"
    with pytest.raises(Conflict, match="exists already"):
        m.add_code_block(sid, "python", "y\n", filename="./pkg/a.py")
    with pytest.raises(InvalidInput, match="not a usable"):
        m.add_code_block(sid, "python", "y\n", filename="../escape.py")
    with pytest.raises(InvalidInput, match="needs some content"):
        m.add_code_block(sid, "python", "  \n")


def test_blocks_resolve_by_path_or_id_prefix(m: DevSessionManager, sid: UUID) -> None:
    named = m.add_code_block(sid, "python", "x\n", filename="a.py").block.block_id
    unnamed = m.add_code_block(sid, "bash", "ls\n").block.block_id
    assert m.resolve_block_id(sid, "a.py") == named
    assert m.resolve_block_id(sid, "block-1.sh") == unnamed
    assert m.resolve_block_id(sid, str(unnamed)[:8]) == unnamed
    with pytest.raises(NotFound):
        m.resolve_block_id(sid, "b.py")


# ----- status -----

LEGAL = {
    (S.ACTIVE, S.PAUSED),
    (S.PAUSED, S.ACTIVE),
    (S.ACTIVE, S.COMPLETED),
    (S.PAUSED, S.COMPLETED),
    (S.ACTIVE, S.ARCHIVED),
    (S.PAUSED, S.ARCHIVED),
    (S.COMPLETED, S.ARCHIVED),
    (S.ACTIVE, S.PROMOTED),
    (S.PAUSED, S.PROMOTED),
    (S.COMPLETED, S.PROMOTED),
}
EVENT_FOR = {
    S.ACTIVE: E.SESSION_RESUMED,
    S.PAUSED: E.SESSION_PAUSED,
    S.COMPLETED: E.SESSION_COMPLETED,
    S.ARCHIVED: E.SESSION_ARCHIVED,
    S.PROMOTED: E.SESSION_PROMOTED,
}


def move(m: DevSessionManager, sid: UUID, status: S) -> DevSession:
    return m.set_status(sid, status, project_id="proj-1" if status == S.PROMOTED else None)


@pytest.mark.parametrize(
    ("current", "target"), [(a, b) for a in S for b in S], ids=lambda s: s.value
)
def test_every_status_transition(m: DevSessionManager, sid: UUID, current: S, target: S) -> None:
    if current != S.ACTIVE:
        move(m, sid, current)
    before = m.get_session(sid)
    if (current, target) not in LEGAL:
        with pytest.raises(Conflict, match=f"cannot become {target.value}|already {target.value}"):
            move(m, sid, target)
        assert m.get_session(sid) == before
        return
    after = move(m, sid, target)
    assert after.status == target
    assert after == m.get_session(sid)
    event = after.event_log[-1]
    assert event.event_type == EVENT_FOR[target]
    assert event.metadata["from_status"] == current.value
    assert len(after.event_log) == len(before.event_log) + 1
    if target in (S.COMPLETED, S.ARCHIVED, S.PROMOTED):
        assert after.end_time == (before.end_time or event.timestamp)
    else:
        assert after.end_time is None
    assert after.promoted_to_project_id == ("proj-1" if target == S.PROMOTED else None)


def test_promotion_needs_a_project_id_and_only_promotion_takes_one(
    m: DevSessionManager, sid: UUID
) -> None:
    with pytest.raises(InvalidInput, match="project id"):
        m.set_status(sid, S.PROMOTED)
    with pytest.raises(InvalidInput, match="project id"):
        m.set_status(sid, S.PAUSED, project_id="p")


def test_completion_time_survives_archiving(m: DevSessionManager, sid: UUID) -> None:
    completed = m.set_status(sid, S.COMPLETED)
    assert completed.end_time is not None
    assert m.set_status(sid, S.ARCHIVED).end_time == completed.end_time


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (S.PAUSED, "is paused; resume it first"),
        (S.COMPLETED, "is completed"),
        (S.ARCHIVED, "accepts no more changes"),
    ],
)
def test_code_changes_need_an_active_session(
    m: DevSessionManager, sid: UUID, status: S, message: str
) -> None:
    block_id = m.add_code_block(sid, "python", "x\n").block.block_id
    m.update_code_block(sid, block_id, "y\n")
    move(m, sid, status)
    for attempt in (
        lambda: m.record_turn(sid, "p", "a"),
        lambda: m.update_code_block(sid, block_id, "z\n"),
        lambda: m.rollback_code_block(sid, block_id, 1),
    ):
        with pytest.raises(Conflict, match=message):
            attempt()


def test_title_and_feedback_are_events(m: DevSessionManager, sid: UUID) -> None:
    m.set_title(sid, "  Better   title ")
    m.set_title(sid, "Better title")  # unchanged: no event
    m.record_feedback(sid, "works")
    session = m.get_session(sid)
    assert session.title == "Better title"
    assert types(session)[1:] == [E.TITLE_CHANGED, E.USER_FEEDBACK]
    assert session.event_log[1].metadata == {"old_title": "demo"}


# ----- cache, persistence, concurrency -----


def build_history(m: DevSessionManager, sid: UUID) -> None:
    m.record_turn(sid, "write", "```python app.py\nx = 1\n```\n```sql\nselect 1;\n```")
    m.record_turn(sid, "fix", "```python app.py\nx = 2\n```")
    m.rollback_code_block(sid, block_named(m, sid, "app.py"), 1)
    m.set_title(sid, "renamed")
    m.set_status(sid, S.PAUSED)


def test_evicted_sessions_load_back_identically(
    make_manager: Callable[..., DevSessionManager],
) -> None:
    clock = FakeClock()
    m = make_manager(cache_max_sessions=2, cache_idle_s=60, clock=clock)
    first = m.create_session("a").dev_session_id
    build_history(m, first)
    snapshot = m.get_session(first)
    m.create_session("b")
    assert first in m.cache
    m.create_session("c")  # over the limit: the least recently used goes
    assert first not in m.cache and len(m.cache) == 2
    reloaded = m.get_session(first)
    assert reloaded == snapshot and reloaded is not snapshot
    assert list(reloaded.code_blocks) == list(snapshot.code_blocks)
    clock.now += 61  # idle for too long: every entry goes
    m.cache.prune()
    assert len(m.cache) == 0
    assert m.get_session(first) == snapshot


def test_reads_refresh_recency_and_evictions_are_logged_with_ids(
        make_manager: Callable[..., DevSessionManager], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator.devsessions")
    m = make_manager(cache_max_sessions=2)
    a = m.create_session("ann").dev_session_id
    b = m.create_session("bob").dev_session_id
    m.get_session(a)  # now b is the least recently used
    m.create_session("cid")
    assert a in m.cache and b not in m.cache
    [evicted] = [r for r in caplog.records if "evicted" in r.getMessage()]
    assert (evicted.__dict__["dev_session_id"], evicted.__dict__["user_id"]) == (str(b), "bob")


def test_host_sessions_use_the_shared_db_and_env_limits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMNUS_DEVSESSION_CACHE_MAX_SESSIONS", "3")
    monkeypatch.setenv("SOMNUS_DEVSESSION_CACHE_IDLE_S", "5")
    settings = Settings(home=tmp_path / "home")
    with fake_host(settings) as host:
        m = host.sessions()
        assert m.store.engine is host.engine
        assert (m.cache.max_sessions, m.cache.idle_seconds) == (3, 5.0)
        sid = m.create_session("u").dev_session_id
    assert settings.db_path.exists()
    engine = open_database(settings.db_path)
    try:
        assert DevSessionManager(DevSessionStore(engine)).get_session(sid).user_id == "u"
    finally:
        engine.dispose()


def test_cache_serves_reads_and_callers_cannot_corrupt_it(
    m: DevSessionManager, sid: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    m.add_code_block(sid, "python", "x\n")
    expected = m.get_session(sid)
    monkeypatch.setattr(m.store, "load", lambda _: pytest.fail("loaded despite the cache"))
    mine = m.get_session(sid)
    mine.code_blocks.clear()
    mine.event_log.clear()
    assert m.get_session(sid) == expected


def test_ended_sessions_leave_the_cache(m: DevSessionManager, sid: UUID) -> None:
    assert sid in m.cache
    m.set_status(sid, S.COMPLETED)
    assert sid not in m.cache


def test_sessions_persist_across_restarts(make_manager: Callable[..., DevSessionManager]) -> None:
    before = make_manager()
    sid = before.create_session("alice").dev_session_id
    build_history(before, sid)
    after = make_manager()  # a new process on the same file
    assert after.get_session(sid) == before.get_session(sid)
    assert after.commit_plan(sid) == before.commit_plan(sid)
    assert after.list_sessions() == before.list_sessions()
    assert after.get_code_block(sid, block_named(after, sid, "app.py"), 2).content == "x = 2\n"


def test_changes_by_another_process_are_seen_and_races_refused(
    make_manager: Callable[..., DevSessionManager],
) -> None:
    mine, theirs = make_manager(), make_manager()
    sid = mine.create_session("alice").dev_session_id
    stale = mine.get_session(sid)
    theirs.record_turn(sid, "p", "```py a.py\nx\n```")
    assert len(mine.get_session(sid).code_blocks) == 1  # not served from the stale cache
    with pytest.raises(Conflict, match="changed meanwhile"), mine.store.write(stale):
        pass


def test_event_ids_are_global_monotonic_and_the_log_is_append_only(
    m: DevSessionManager, db: Path
) -> None:
    a = m.create_session("a").dev_session_id
    b = m.create_session("b").dev_session_id
    build_history(m, a)
    build_history(m, b)
    ids = sorted(e.event_id for s in (a, b) for e in m.get_session(s).event_log)
    assert ids == list(range(1, len(ids) + 1))
    with Session(m.store.engine) as db_session:
        rows = db_session.exec(select(func.count()).select_from(DevSessionEventRow)).one()
    assert rows == len(ids)


def test_logs_carry_session_and_user_ids(
    m: DevSessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.devsessions")
    sid = m.create_session("carol").dev_session_id
    m.record_turn(sid, "p", "```py\nx\n```")
    records = [r for r in caplog.records if r.name.startswith("orchestrator.devsessions")]
    assert len(records) == 2
    for record in records:
        ids = (record.__dict__["dev_session_id"], record.__dict__["user_id"])
        assert ids == (str(sid), "carol")
        assert f"dev_session={sid} user=carol" in record.getMessage()


# ----- summary and exports -----


def test_summary_counts_blocks_and_lines_per_language(m: DevSessionManager, sid: UUID) -> None:
    m.record_turn(sid, "p", "```python a.py\n1\n2\n```\n```python b.py\n3\n```\n```sql\ns;\n```")
    m.record_turn(sid, "p", "```python a.py\n1\n```")
    ended = m.set_status(sid, S.COMPLETED)
    summary = m.get_summary(sid)
    assert summary.event_count == len(ended.event_log) == 10
    assert summary.block_count == 3
    assert {k: (v.blocks, v.lines) for k, v in summary.languages.items()} == {
        "python": (2, 2),
        "sql": (1, 1),
    }
    assert ended.end_time is not None
    assert summary.duration_seconds == (ended.end_time - ended.start_time).total_seconds()


def test_commit_plan_replays_code_history_in_order(m: DevSessionManager, sid: UUID) -> None:
    m.add_code_block(sid, "python", "named = 1\n", filename="block-1.py")
    m.record_turn(sid, "start the tool", "```python\nprint('a')\n```\n```bash\nrun\n```")
    m.record_turn(sid, "chat only", "no code this time")
    m.record_turn(
        sid,
        "make it loud",
        "```python\nprint('A')\n```",
        target_block_id=m.resolve_block_id(sid, "block-2.py"),
    )
    m.rollback_code_block(sid, m.resolve_block_id(sid, "block-2.py"), 1)
    session = m.get_session(sid)
    plan = m.commit_plan(sid)
    code_events = [e for e in session.event_log if e.target_block_id is not None]
    assert [s.event_id for s in plan] == [e.event_id for e in code_events]
    assert [s.message.split("\n", 1)[0] for s in plan] == [
        "Add block-1.py",
        "Add block-2.py",
        "Add block-3.sh",
        "Update block-2.py to version 2",
        "Roll back block-2.py to version 1",
    ]
    assert [s.changed for s in plan] == [
        ["block-1.py"],
        ["block-2.py"],
        ["block-3.sh"],
        ["block-2.py"],
        ["block-2.py"],
    ]
    assert plan[2].files == {
        "block-1.py": "named = 1\n",
        "block-2.py": "print('a')\n",
        "block-3.sh": "run\n",
    }
    assert plan[3].files["block-2.py"] == "print('A')\n"
    assert plan[4].files["block-2.py"] == "print('a')\n"
    assert "Prompt:\nmake it loud\n" in plan[3].message
    assert "Prompt:" not in plan[0].message + plan[4].message
    assert plan[1].message.endswith(f"Dev-Session: {sid}\nDev-Session-Event: {plan[1].event_id}\n")


def test_undo_notice_tells_the_model_until_it_answers(m: DevSessionManager, sid: UUID) -> None:
    m.record_turn(sid, "p", "```python app.py\nx = 1\n```")
    m.record_turn(sid, "p", "```python app.py\nx = 2\n```")
    assert m.undo_notice(sid) is None
    m.rollback_code_block(sid, block_named(m, sid, "app.py"), 1)
    notice = m.undo_notice(sid)
    assert notice is not None
    assert "do not re-apply" in notice
    assert "- app.py: back to version 1 (saved as version 3)" in notice
    assert notice.endswith("```python app.py\nx = 1\n```\n")
    m.record_turn(sid, "p", "ok")
    assert m.undo_notice(sid) is None
