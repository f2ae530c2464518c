"""Research in the orchestrator's SQLite file: the host's record of each run, the
allow-list of the fetch proxy, its request log, and its own crawl index for search.

The research VM holds the truth about a run while it runs; the host keeps the last
view it saw (and the report once there is one), so ``list``, ``status`` and ``report``
work while that VM is off. The crawl index (``research_pages``) has an FTS5 table over
its titles and texts (``research_pages_fts``, external content, kept in step by
triggers) that ``search`` ranks with BM25 when no search engine is configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import DDL, delete, event, func, text
from sqlmodel import Field, SQLModel, col, select

from core.errors import NotFound
from guest_agent.protocol.research import (
    ResearchMode,
    ResearchReport,
    ResearchRunView,
    ResearchStage,
    ResearchStatus,
    StopReason,
)
from orchestrator.migrations import RESEARCH_PAGES_FTS
from orchestrator.models import utcnow
from orchestrator.store import SQLiteStore

FETCH_LOG_KEEP = 5000  # newest rows of research_fetch_log


class FetchLogKind(StrEnum):
    FETCH = "fetch"  # a page (a run's, a corpus URL's, a robots.txt)
    SEARCH = "search"
    CRAWL = "crawl"  # a page of 'somnus research allow HOST --crawl'


class ResearchRunRow(SQLModel, table=True):
    __tablename__ = "research_runs"

    run_id: str = Field(primary_key=True)
    vm: str
    question: str
    mode: ResearchMode
    status: ResearchStatus
    stage: ResearchStage | None = None
    created_at: float  # Unix time, as the VM's view has it
    updated_at: float
    stop_reason: StopReason | None = None
    error: str | None = None
    view_json: str  # the last ResearchRunView the host saw
    report_json: str | None = None  # the ResearchReport, once the run has one

    def view(self) -> ResearchRunView:
        return ResearchRunView.model_validate_json(self.view_json)

    def report(self) -> ResearchReport | None:
        return ResearchReport.model_validate_json(self.report_json) if self.report_json else None


class AllowedHostRow(SQLModel, table=True):
    __tablename__ = "research_allowed_hosts"

    host: str = Field(primary_key=True)  # lowercase host, with :port when not the default
    added_at: datetime = Field(default_factory=utcnow)


class FetchLogRow(SQLModel, table=True):
    __tablename__ = "research_fetch_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow)
    vm: str | None = None  # None: the host's own (a crawl, a corpus URL from the CLI)
    run_id: str | None = Field(default=None, index=True)
    kind: FetchLogKind
    target: str  # the URL, or the search query
    host: str | None = None
    allowed: bool
    status: int | None = None
    bytes: int = 0
    cached: bool = False
    reason: str | None = None  # why it was refused or failed, or what it was


class ResearchPageRow(SQLModel, table=True):
    __tablename__ = "research_pages"

    url: str = Field(primary_key=True)
    host: str = Field(index=True)
    title: str = ""
    text: str = ""
    fetched_at: datetime = Field(default_factory=utcnow)


# The migration makes the full-text index; create_all (the tests' schema) the same.
for _statement in RESEARCH_PAGES_FTS:
    event.listen(ResearchPageRow.__table__, "after_create",  # type: ignore[attr-defined]
                 DDL(_statement))


@dataclass(frozen=True)
class PageHit:
    url: str
    title: str
    snippet: str


def fts_query(query: str) -> str:
    """The words of ``query`` as FTS5 string literals joined by OR (none of FTS5's query
    syntax gets through: every term is quoted); empty when it has no word."""
    terms = dict.fromkeys(t.lower() for t in re.findall(r"\w+", query))
    return " OR ".join(f'"{t}"' for t in terms)


class ResearchStore(SQLiteStore):
    """Typed access to the research tables; one short transaction per call."""

    # -- runs -----------------------------------------------------------------------------

    def save_view(self, vm: str, view: ResearchRunView) -> ResearchRunRow:
        """Record the view the VM gave (inserting the run's row the first time)."""
        with self.session() as db:
            row = db.get(ResearchRunRow, view.run_id)
            if row is None:
                row = ResearchRunRow(run_id=view.run_id, vm=vm, question=view.request.question,
                                     mode=view.request.mode, status=view.status,
                                     created_at=view.created_at, updated_at=view.updated_at,
                                     view_json="")
            row.vm = vm
            row.status, row.stage = view.status, view.stage
            row.updated_at = view.updated_at
            row.stop_reason, row.error = view.stop_reason, view.error
            row.view_json = view.model_dump_json()
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    def save_report(self, report: ResearchReport) -> None:
        with self.session() as db:
            row = db.get(ResearchRunRow, report.run_id)
            if row is None:
                return
            row.report_json = report.model_dump_json()
            db.add(row)
            db.commit()

    def find_run(self, run_id: str) -> ResearchRunRow | None:
        with self.session() as db:
            return db.get(ResearchRunRow, run_id)

    def run(self, run_id: str) -> ResearchRunRow:
        row = self.find_run(run_id)
        if row is None:
            raise NotFound(f"no research run '{run_id}' (see 'somnus research list')")
        return row

    def runs(self) -> list[ResearchRunRow]:
        """Every run, newest first."""
        with self.session() as db:
            query = select(ResearchRunRow).order_by(col(ResearchRunRow.created_at).desc())
            return list(db.exec(query))

    # -- the allow-list -------------------------------------------------------------------

    def allow(self, host: str) -> AllowedHostRow:
        with self.session() as db:
            row = db.get(AllowedHostRow, host)
            if row is None:
                row = AllowedHostRow(host=host)
                db.add(row)
                db.commit()
                db.refresh(row)
            return row

    def disallow(self, host: str) -> bool:
        """Take ``host`` off the list; False if it was not on it."""
        with self.session() as db:
            row = db.get(AllowedHostRow, host)
            if row is None:
                return False
            db.delete(row)
            db.commit()
            return True

    def allowed(self) -> list[AllowedHostRow]:
        with self.session() as db:
            return list(db.exec(select(AllowedHostRow).order_by(col(AllowedHostRow.host))))

    def is_allowed(self, host: str) -> bool:
        with self.session() as db:
            return db.get(AllowedHostRow, host) is not None

    # -- the fetch log --------------------------------------------------------------------

    def log(self, entry: FetchLogRow, keep: int = FETCH_LOG_KEEP) -> None:
        with self.session() as db:
            db.add(entry)
            db.commit()
            db.refresh(entry)
            # Prune now and then, not on every insert: ids grow by one per row.
            if entry.id is not None and entry.id % 100 == 0:
                db.exec(delete(FetchLogRow).where(col(FetchLogRow.id) <= entry.id - keep))
                db.commit()

    def fetch_log(self, limit: int = 100, run_id: str | None = None) -> list[FetchLogRow]:
        """The newest ``limit`` entries, newest first."""
        query = select(FetchLogRow)
        if run_id is not None:
            query = query.where(FetchLogRow.run_id == run_id)
        with self.session() as db:
            return list(db.exec(query.order_by(col(FetchLogRow.id).desc()).limit(limit)))

    # -- the crawl index ------------------------------------------------------------------

    def save_page(self, url: str, host: str, title: str, body: str) -> None:
        """Index a page (replacing the row of the same URL; the triggers keep FTS in step)."""
        with self.session() as db:
            db.execute(text(
                "INSERT INTO research_pages (url, host, title, text, fetched_at) "
                "VALUES (:url, :host, :title, :text, :at) ON CONFLICT(url) DO UPDATE SET "
                "host = excluded.host, title = excluded.title, text = excluded.text, "
                "fetched_at = excluded.fetched_at"),
                {"url": url, "host": host, "title": title, "text": body,
                 "at": utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")})
            db.commit()

    def page(self, url: str) -> ResearchPageRow | None:
        with self.session() as db:
            return db.get(ResearchPageRow, url)

    def page_count(self, host: str | None = None) -> int:
        query = select(func.count()).select_from(ResearchPageRow)
        if host is not None:
            query = query.where(ResearchPageRow.host == host)
        with self.session() as db:
            return int(db.exec(query).one())

    def search_pages(self, query: str, hosts: Iterable[str], limit: int) -> list[PageHit]:
        """Pages of ``hosts`` matching any word of ``query``, best first (BM25, a title
        match counting double)."""
        match = fts_query(query)
        hosts = list(hosts)
        if not match or not hosts or limit < 1:
            return []
        marks = ", ".join(f":h{i}" for i in range(len(hosts)))
        sql = text(
            "SELECT p.url, p.title, snippet(research_pages_fts, 1, '', '', ' … ', 24) "
            "FROM research_pages_fts "
            "JOIN research_pages AS p ON p.rowid = research_pages_fts.rowid "
            f"WHERE research_pages_fts MATCH :match AND p.host IN ({marks}) "
            "ORDER BY bm25(research_pages_fts, 2.0, 1.0) LIMIT :limit")
        params: dict[str, object] = {"match": match, "limit": limit}
        params.update({f"h{i}": host for i, host in enumerate(hosts)})
        with self.session() as db:
            rows = db.execute(sql, params).all()
        return [PageHit(url=r[0], title=r[1] or "", snippet=" ".join((r[2] or "").split()))
                for r in rows]
