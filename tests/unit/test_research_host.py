"""Research on the host: the fetch proxy against real HTTP servers on loopback (allow-list on
every hop, robots.txt, size cap, cache, log, crawl and BM25 search, a SearXNG endpoint),
report export, the service following a run through a scripted research agent (serving
its fetch requests, surviving a broken stream and a swap, caching the report), the CLI
and the REST API. No VM: libvirt's test driver and stand-in agents."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from typer.testing import CliRunner

from core.config import Settings
from core.errors import Conflict, GuestConflict, GuestError, GuestNotFound, InvalidInput, NotFound
from guest_agent.protocol import Subsystem
from guest_agent.protocol.research import (
    FINISHED,
    Citation,
    Claim,
    CorpusDocument,
    CorpusDocumentIn,
    CorpusList,
    DocumentFormat,
    FetchKind,
    FetchRequest,
    FetchRequestList,
    FetchResult,
    ReportSection,
    ResearchEvent,
    ResearchEventKind,
    ResearchMode,
    ResearchReport,
    ResearchRequest,
    ResearchRunList,
    ResearchRunView,
    ResearchStage,
    ResearchStatus,
    ResearchUsage,
    Source,
    SourceKind,
    SourceScope,
    StopReason,
    Verdict,
)
from images.catalog import ImageManifest
from images.recipe import Flavour
from orchestrator.database import open_database
from orchestrator.host import Host
from orchestrator.research.export import ReportFormat, render
from orchestrator.research.proxy import FetchProxy, extract_html, normalize_host
from orchestrator.research.tables import FetchLogKind, ResearchStore, fts_query
from tests.conftest import write_image
from tests.fakes import StandInAgent, agents_of
from tests.unit.test_api import api, api_app, auth  # noqa: F401  (fixtures)
from tests.unit.test_api_schema import _validated

RESEARCH_IMAGE = "12" * 32

# -- a web site on loopback ------------------------------------------------------------------


class Site:
    """A folder served over HTTP on 127.0.0.1, counting what it is asked; ``routes`` answer
    some paths themselves (a redirect, a body without a length, a search engine)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        self.bodies: list[bytes] = []
        self.routes: dict[str, Callable[[SimpleHTTPRequestHandler], None]] = {}
        site = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                site.requests.append(self.path)
                route = site.routes.get(urlsplit(self.path).path)
                if route is not None:
                    route(self)
                else:
                    super().do_GET()

            def do_POST(self) -> None:
                site.requests.append(f"POST {self.path}")
                site.bodies.append(self.rfile.read(int(self.headers["Content-Length"] or 0)))
                site.routes[f"POST {urlsplit(self.path).path}"](self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          partial(Handler, directory=str(folder)))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def asked(self, path: str) -> int:
        return sum(1 for p in self.requests if urlsplit(p).path == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def redirect(to: str) -> Callable[[SimpleHTTPRequestHandler], None]:
    def answer(handler: SimpleHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def no_length(handler: SimpleHTTPRequestHandler) -> None:
    """10 KB with no Content-Length: only streaming can tell it is too big."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.end_headers()
    for _ in range(10):
        handler.wfile.write(b"x" * 1024)


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Site]:
    """A second site, never allowed: nothing may reach it unless the test says so."""
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "elsewhere.html").write_text("<title>Elsewhere</title>")
    site = Site(tmp_path / "other")
    yield site
    site.close()


@pytest.fixture
def web(tmp_path: Path, other: Site) -> Iterator[Site]:
    root = tmp_path / "site"
    (root / "private").mkdir(parents=True)
    (root / "index.html").write_text(
        "<html><head><title>Index &amp; Home</title><style>.x{color:red}</style></head>"
        "<body><h1>Welcome</h1><p>Start here.</p>"
        '<a href="a.html">A</a> <a href="/b.html#part">B</a> '
        '<a href="private/secret.html">secret</a> '
        f'<a href="{other.url}/elsewhere.html">elsewhere</a> <a href="mailto:x@y.org">mail</a>'
        '<script>var hidden = "scriptword";</script></body></html>')
    (root / "a.html").write_text("<html><title>Alpha</title><body><p>The zanzibarite "
                                 "crystal is rare.</p></body></html>")
    (root / "b.html").write_text('<html><title>Beta</title><body><p>Just words.</p>'
                                 '<a href="index.html">home</a></body></html>')
    (root / "private" / "secret.html").write_text("<title>Secret</title><p>hidden</p>")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (root / "big.html").write_text("<p>" + "y" * 10_000 + "</p>")
    site = Site(root)
    site.routes["/redirect"] = redirect(f"{other.url}/elsewhere.html")
    site.routes["/hop"] = redirect("/a.html")
    site.routes["/nolength"] = no_length
    yield site
    site.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResearchStore]:
    engine = open_database(tmp_path / "research.db")
    yield ResearchStore(engine)
    engine.dispose()


@pytest.fixture
def proxy(store: ResearchStore, settings: Settings, tmp_path: Path) -> Iterator[FetchProxy]:
    settings.research_proxy_max_bytes = 2048
    made = FetchProxy(store, tmp_path / "cache", settings)
    yield made
    made.close()


# -- hosts, pages, queries -----------------------------------------------------------------


def test_hosts_are_normalised_and_bad_ones_refused_in_one_line() -> None:
    assert normalize_host(" Example.ORG ") == "example.org"
    assert normalize_host("https://Example.org:443/some/page?q=1") == "example.org"
    assert normalize_host("http://example.org:8080/") == "example.org:8080"
    assert normalize_host("127.0.0.1:8765") == "127.0.0.1:8765"
    assert normalize_host("example.org:80") == "example.org"
    assert normalize_host("http://[::1]:8000/") == "[::1]:8000"
    assert normalize_host("bücher.de") == "xn--bcher-kva.de"
    for bad in ("", "   ", "ftp://example.org", "exa mple.org", "example.org:99999", "http://[::1",
                "-bad-.org", "a..b"):
        with pytest.raises(InvalidInput, match=r"is not a host: give example\.org") as caught:
            normalize_host(bad)
        assert "\n" not in str(caught.value)


def test_html_is_stripped_to_its_title_visible_text_and_links() -> None:
    page = extract_html("<html><head><title> A &amp; B </title><script>x()</script></head>"
                        "<body><p>one <b>two</b></p><div>three</div><style>p{}</style>"
                        '<a href="/next">next</a><svg><text>drawn</text></svg></body></html>')
    assert page.title == "A & B"
    assert page.text == "one two\nthree\nnext"
    assert page.links == ["/next"]


def test_search_queries_are_quoted_terms_joined_by_or() -> None:
    assert fts_query('rust "OR" go* NEAR(x)') == '"rust" OR "or" OR "go" OR "near" OR "x"'
    assert fts_query("  -- ") == ""


# -- the fetch proxy -------------------------------------------------------------------------


def test_an_allowed_fetch_is_made_logged_and_then_served_from_the_cache(
        proxy: FetchProxy, web: Site) -> None:
    assert proxy.allow(web.url + "/index.html") == web.host
    first = proxy.fetch(web.url + "/index.html", vm="research", run_id="r-00000001")
    assert first.ok and first.status == 200 and not first.cached, first.error
    assert first.title == "Index & Home" and (first.content_type or "").startswith("text/html")
    assert b"Welcome" in base64.b64decode(first.body_b64 or "")
    assert web.asked("/index.html") == 1 and web.asked("/robots.txt") == 1
    again = proxy.fetch(web.url + "/index.html", vm="research", run_id="r-00000001")
    assert again.ok and again.cached and again.body_b64 == first.body_b64
    assert web.asked("/index.html") == 1  # the second did not reach the server
    newest, page, robots = proxy.store.fetch_log(3)
    assert (newest.cached, newest.allowed, newest.run_id, newest.vm) == (
        True, True, "r-00000001", "research")
    assert (page.target, page.status, page.allowed, page.cached) == (
        web.url + "/index.html", 200, True, False)
    assert page.bytes > 100 and page.host == web.host and page.kind is FetchLogKind.FETCH
    assert robots.target == web.url + "/robots.txt" and robots.reason == "robots.txt"


def test_a_host_not_on_the_list_is_refused_and_never_asked(
        proxy: FetchProxy, web: Site, other: Site) -> None:
    proxy.allow(web.host)
    result = proxy.fetch(other.url + "/elsewhere.html", vm="research", run_id="r-00000002")
    assert not result.ok
    assert result.error == (f"host '{other.host}' is not on the research allow-list: "
                            f"'somnus research allow {other.host}'")
    (entry,) = proxy.store.fetch_log(10)
    assert (entry.allowed, entry.host, entry.run_id) == (False, other.host, "r-00000002")
    assert other.requests == []
    assert not proxy.fetch("file:///etc/passwd").ok
    assert not proxy.fetch("gopher://example.org/").ok


def test_robots_txt_is_honoured(proxy: FetchProxy, web: Site) -> None:
    proxy.allow(web.host)
    result = proxy.fetch(web.url + "/private/secret.html")
    assert not result.ok
    assert result.error == (f"robots.txt of '{web.host}' disallows /private/secret.html for "
                            "SomnusResearch/0.1")
    assert web.asked("/private/secret.html") == 0
    assert proxy.store.fetch_log(1)[0].allowed is False
    assert proxy.fetch(web.url + "/a.html").ok
    assert web.asked("/robots.txt") == 1  # once per host


def failing(status: int) -> Callable[[SimpleHTTPRequestHandler], None]:
    def answer(handler: SimpleHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


@pytest.mark.parametrize(("status", "allowed"), [(500, False), (403, False), (404, True)])
def test_robots_txt_that_fails_disallows_on_server_errors(proxy: FetchProxy, web: Site,
                                                         status: int, allowed: bool) -> None:
    """RFC 9309: robots.txt answering 5xx means disallow all; 4xx means no rules (but
    401/403, as Python's robotparser reads them)."""
    web.routes["/robots.txt"] = failing(status)
    proxy.allow(web.host)
    assert proxy.fetch(web.url + "/a.html").ok is allowed
    assert web.asked("/a.html") == int(allowed)


def test_every_redirect_hop_must_be_allowed(proxy: FetchProxy, web: Site, other: Site) -> None:
    proxy.allow(web.host)
    hop = proxy.fetch(web.url + "/hop")
    assert hop.ok and hop.url == web.url + "/a.html" and hop.title == "Alpha"
    refused = proxy.fetch(web.url + "/redirect")
    assert not refused.ok and other.requests == []
    assert refused.error == (f"{web.url}/redirect redirects to {other.url}/elsewhere.html: "
                             f"host '{other.host}' is not on the research allow-list: "
                             f"'somnus research allow {other.host}'")


def test_responses_over_the_size_cap_are_refused(proxy: FetchProxy, web: Site) -> None:
    proxy.allow(web.host)
    declared = proxy.fetch(web.url + "/big.html")  # its Content-Length says so
    streamed = proxy.fetch(web.url + "/nolength")  # found out while reading
    for result in (declared, streamed):
        assert not result.ok and result.error and result.error.endswith(
            "larger than 2048 bytes"), result
    assert proxy.store.fetch_log(1)[0].reason == "larger than 2048 bytes"
    assert not proxy.fetch(web.url + "/missing.html").ok  # 404: not ok, with the status


def test_a_crawl_indexes_the_host_and_search_finds_a_page_by_its_own_word(
        proxy: FetchProxy, web: Site, other: Site) -> None:
    proxy.allow(web.host)
    seen: list[str] = []
    assert proxy.crawl(web.host, progress=seen.append) == 3  # index, a, b: not the private one
    assert len(seen) == 3 and other.requests == [] and web.asked("/private/secret.html") == 0
    assert proxy.store.page_count(web.host) == 3
    found = proxy.search("zanzibarite", limit=5)
    assert found.ok and [r.url for r in found.results] == [web.url + "/a.html"]
    assert found.results[0].title == "Alpha" and "zanzibarite" in found.results[0].snippet
    assert proxy.search("scriptword").results == []  # scripts are not text
    assert proxy.store.fetch_log(1)[0].kind is FetchLogKind.SEARCH
    # Only allowed hosts are searched: the pages stay indexed, unused.
    proxy.allow("example.org")
    proxy.disallow(web.host)
    assert proxy.search("zanzibarite").results == []
    proxy.disallow("example.org")
    empty = proxy.search("zanzibarite")
    assert not empty.ok and "allow-list is empty" in (empty.error or "")
    with pytest.raises(InvalidInput, match="not on the research allow-list"):
        proxy.crawl(web.host)


def test_a_page_fetched_again_replaces_its_index_entry(proxy: FetchProxy, web: Site) -> None:
    proxy.allow(web.host)
    proxy.store.save_page(web.url + "/a.html", web.host, "Old", "obsolete words")
    assert proxy.search("obsolete").results
    assert proxy.fetch(web.url + "/a.html").ok
    assert proxy.search("obsolete").results == []
    assert [r.title for r in proxy.search("zanzibarite").results] == ["Alpha"]


def test_searxng_results_are_kept_only_on_allowed_hosts(
        proxy: FetchProxy, web: Site, other: Site) -> None:
    asked: list[dict[str, list[str]]] = []

    def engine(handler: SimpleHTTPRequestHandler) -> None:
        asked.append(parse_qs(urlsplit(handler.path).query))
        body = json.dumps({"results": [
            {"url": "https://not-allowed.example/x", "title": "No", "content": "nope"},
            {"url": web.url + "/a.html", "title": "Alpha", "content": "zanzibarite"},
            {"title": "no url"},
        ]}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    other.routes["/search"] = engine
    proxy.settings.research_search_url = other.url + "/search"
    proxy.allow(web.host)
    result = proxy.search("crystals", limit=5, vm="research", run_id="r-00000003")
    assert result.ok and [(r.url, r.title, r.snippet) for r in result.results] == [
        (web.url + "/a.html", "Alpha", "zanzibarite")]
    assert asked == [{"q": ["crystals"], "format": ["json"]}]
    entry = proxy.store.fetch_log(1)[0]
    assert (entry.kind, entry.host, entry.target) == (FetchLogKind.SEARCH, other.host,
                                                       "crystals")
    assert entry.reason == "searxng: 1 of 3 results on allowed hosts"


# -- the agent client ----------------------------------------------------------------------


def answer_json(status: int, body: Any,
                content_type: str = "application/json") -> Callable[[Any], None]:
    def answer(handler: SimpleHTTPRequestHandler) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def test_the_agent_client_speaks_the_research_api(tmp_path: Path) -> None:
    from orchestrator.agent_client import AgentClient

    agent = Site(tmp_path)
    request = ResearchRequest(run_id="r-00000001", question="What is a heap?")
    view = ResearchRunView(run_id="r-00000001", request=request, status=ResearchStatus.PLANNING,
                           created_at=1.0, updated_at=1.0)
    events = [ResearchEvent(seq=n, at=1.0, kind=ResearchEventKind.QUERY, message=f"q{n}")
              for n in (2, 3)]
    stream = ": keepalive\n\n" + "".join(f"data: {e.model_dump_json()}\n\n" for e in events)
    agent.routes.update({
        "POST /research/runs": answer_json(202, view.model_dump(mode="json")),
        "/research/runs/r-00000001/events": answer_json(200, stream, "text/event-stream"),
        "/research/runs/r-00000001/report": answer_json(
            409, {"error": "run r-00000001 has not finished"}),
        "/research/fetches": answer_json(200, {"requests": []}),
        "POST /research/fetches/f1": answer_json(200, {"accepted": True}),
        "POST /research/fetches/f2": answer_json(404, {"error": "no fetch request f2"}),
    })
    try:
        client = AgentClient(agent.port, "t" * 40, vm_name="research")
        assert client.research_start(request) == view
        assert json.loads(agent.bodies[0])["question"] == "What is a heap?"
        assert list(client.research_events("r-00000001", after=1)) == events
        assert parse_qs(urlsplit(agent.requests[-1]).query) == {"after": ["1"],
                                                               "follow": ["true"]}
        with pytest.raises(GuestConflict) as refused:
            client.research_report("r-00000001")
        assert isinstance(refused.value, Conflict) and refused.value.http_status == 409
        assert refused.value.message == "VM 'research': run r-00000001 has not finished"
        assert client.research_fetches(wait_s=0).requests == []
        assert parse_qs(urlsplit(agent.requests[-1]).query) == {"wait": ["0"]}
        assert client.research_answer("f1", FetchResult(ok=False, error="no")) is True
        with pytest.raises(GuestNotFound):
            client.research_answer("f2", FetchResult(ok=True))
    finally:
        agent.close()


# -- export ----------------------------------------------------------------------------------


def handmade_report(**changes: Any) -> ResearchReport:
    fields: dict[str, Any] = dict(
        run_id="r-0badc0de", question="Are <b>cats</b> liquid?", mode=ResearchMode.FACT_CHECK,
        title="Cats & <script>alert(1)</script>", summary="Mostly, yes [1].",
        sections=[
            ReportSection(heading="Evidence", claims=[
                Claim(text="Cats fill containers.",
                      citations=[Citation(n=1, quote="a cat fills its box"),
                                 Citation(n=2, quote="it takes the shape")]),
                Claim(text="Rheology applies <sometimes>.",
                      citations=[Citation(n=2, quote="it takes the shape"),
                                 Citation(n=3, quote="unlisted source's words")]),
            ]),
        ],
        sources=[Source(n=1, kind=SourceKind.WEB, ref="https://example.org/cats?a=1&b=2",
                        title="Cats \"daily\"", doc_id="d1"),
                 Source(n=2, kind=SourceKind.CORPUS, ref="/home/u/papers/rheology.pdf",
                        title="Rheology", doc_id="d2")],
        verdict=Verdict.SUPPORTED, stop_reason=StopReason.TOKENS,
        usage=ResearchUsage(model_calls=7, prompt_tokens=1000, completion_tokens=234,
                            sources_read=2, queries=4, elapsed_s=12.5),
        created_at=1_700_000_000.0)
    fields.update(changes)
    return ResearchReport(**fields)


def test_markdown_has_every_cited_source_with_its_quotes() -> None:
    text = render(handmade_report(), ReportFormat.MARKDOWN)
    assert text.startswith("# Cats & <script>alert(1)</script>\n")
    assert "**Verdict:** supported" in text
    assert "- Cats fill containers. [1][2]" in text
    assert "- Rheology applies <sometimes>. [2][3]" in text
    sources = text.split("## Sources", 1)[1]
    for n in (1, 2, 3):
        assert f"\n[{n}] " in sources
    assert '[1] Cats "daily" — https://example.org/cats?a=1&b=2' in sources
    assert sources.count("> it takes the shape") == 1  # one quote, cited twice
    assert "> a cat fills its box" in sources and "> unlisted source's words" in sources
    assert "Stopped: tokens · 7 model calls · 1,234 tokens" in text


def test_html_is_self_contained_escaped_and_links_each_citation() -> None:
    page = render(handmade_report(), ReportFormat.HTML)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;cats&lt;/b&gt;" in page and "&lt;sometimes&gt;" in page
    assert "<link" not in page and "src=" not in page and "@import" not in page
    for n in (1, 2, 3):
        assert f'href="#src-{n}"' in page and f'id="src-{n}"' in page
    assert "<blockquote>a cat fills its box</blockquote>" in page
    assert 'href="https://example.org/cats?a=1&amp;b=2"' in page
    assert "Verdict: supported" in page


def test_json_is_the_report_itself() -> None:
    report = handmade_report(mode=ResearchMode.COMPARE, verdict=None, subjects=["A", "B"])
    assert ResearchReport.model_validate_json(render(report, ReportFormat.JSON)) == report
    assert "**Compared:** A, B" in render(report, ReportFormat.MARKDOWN)


# -- the service, with a scripted research agent ---------------------------------------------


class ResearchAgent(StandInAgent):
    """A research VM's agent, scripted: a run starts active in its fetch stage; following
    it asks the host for ``page`` (web runs) and completes once the answer came."""

    def __init__(self, name: str, page: str | None = None) -> None:
        super().__init__(name)
        self.page = page
        self.views: dict[str, ResearchRunView] = {}
        self.events: dict[str, list[ResearchEvent]] = {}
        self.queue: list[FetchRequest] = []
        self.handed: set[str] = set()
        self.answers: dict[str, FetchResult] = {}
        self.changed = threading.Condition()
        self.break_after: int | None = None  # the stream breaks once after this event
        self.on_break: Callable[[], object] | None = None
        self.documents: list[CorpusDocument] = []
        self.sent: list[CorpusDocumentIn] = []

    def _event(self, run_id: str, kind: ResearchEventKind, stage: ResearchStage | None = None,
               message: str = "", **data: Any) -> None:
        log = self.events[run_id]
        log.append(ResearchEvent(seq=len(log) + 1, at=time.time(), kind=kind, stage=stage,
                                 message=message, data=data))
        self.views[run_id] = self.views[run_id].model_copy(
            update={"last_event": len(log), "updated_at": time.time()})

    def _set(self, run_id: str, **changes: Any) -> None:
        self.views[run_id] = self.views[run_id].model_copy(update=changes)

    def _view(self, run_id: str) -> ResearchRunView:
        if run_id not in self.views:
            raise GuestNotFound(f"VM '{self.name}': no research run '{run_id}'")
        return self.views[run_id]

    def research_start(self, request: ResearchRequest, timeout_s: float = 30) -> ResearchRunView:
        self._check("research_start")
        if request.run_id in self.views:
            raise GuestConflict(f"VM '{self.name}': research run {request.run_id} exists")
        now = time.time()
        self.views[request.run_id] = ResearchRunView(
            run_id=request.run_id, request=request, status=ResearchStatus.ACTIVE,
            stage=ResearchStage.FETCH, round=1, created_at=now, updated_at=now)
        self.events[request.run_id] = []
        self._event(request.run_id, ResearchEventKind.STATUS, status="active")
        self._event(request.run_id, ResearchEventKind.STAGE, ResearchStage.FETCH, round=1)
        return self.views[request.run_id]

    def research_runs(self, timeout_s: float = 30) -> ResearchRunList:
        self._check("research_runs")
        return ResearchRunList(runs=list(self.views.values()))

    def research_run(self, run_id: str, timeout_s: float = 30) -> ResearchRunView:
        self._check("research_run")
        return self._view(run_id)

    def research_events(self, run_id: str, after: int = 0, follow: bool = True,
                        timeout_s: float | None = None) -> Iterator[ResearchEvent]:
        self._check("research_events")
        self._view(run_id)
        while True:
            for event in list(self.events[run_id][after:]):
                yield event
                after = event.seq
                if self.break_after == event.seq:
                    self.break_after = None
                    if self.on_break is not None:
                        self.on_break()
                    raise GuestError(f"VM '{self.name}': agent research stream broke: reset")
            if self.views[run_id].status in FINISHED or not follow:
                return
            self._advance(run_id)

    def _advance(self, run_id: str) -> None:
        """The run's one step: read its source (through the host for a web run), finish."""
        title = "a corpus document"
        if self.views[run_id].request.sources is not SourceScope.CORPUS and self.page:
            request = FetchRequest(fetch_id=uuid.uuid4().hex, run_id=run_id,
                                   kind=FetchKind.FETCH, url=self.page)
            with self.changed:
                self.queue.append(request)
                self.changed.notify_all()
                if not self.changed.wait_for(lambda: request.fetch_id in self.answers, 10):
                    raise GuestError("nobody answered the fetch request")
            answer = self.answers[request.fetch_id]
            title = answer.title if answer.ok and answer.title else f"failed: {answer.error}"
        self._event(run_id, ResearchEventKind.SOURCE, ResearchStage.FETCH, title)
        self._event(run_id, ResearchEventKind.STAGE_DONE, ResearchStage.FETCH)
        self._set(run_id, status=ResearchStatus.COMPLETED, stage=ResearchStage.REPORT,
                  stop_reason=StopReason.DONE)
        self._event(run_id, ResearchEventKind.STATUS, status="completed")

    def research_report(self, run_id: str, timeout_s: float = 60) -> ResearchReport:
        self._check("research_report")
        view = self._view(run_id)
        if view.status is not ResearchStatus.COMPLETED:
            raise GuestConflict(f"VM '{self.name}': research run {run_id} has not finished")
        source = next(e.message for e in self.events[run_id]
                      if e.kind is ResearchEventKind.SOURCE)
        return handmade_report(run_id=run_id, question=view.request.question,
                               mode=view.request.mode, title=f"On {source}",
                               sources=[Source(n=1, kind=SourceKind.WEB, ref=self.page or "",
                                               title=source, doc_id="d1")])

    def research_cancel(self, run_id: str, timeout_s: float = 30) -> ResearchRunView:
        self._check("research_cancel")
        self._view(run_id)
        self._set(run_id, status=ResearchStatus.CANCELLED, stop_reason=StopReason.CANCELLED)
        self._event(run_id, ResearchEventKind.STATUS, status="cancelled")
        return self.views[run_id]

    def research_resume(self, run_id: str, timeout_s: float = 30) -> ResearchRunView:
        self._check("research_resume")
        if self._view(run_id).status is ResearchStatus.COMPLETED:
            raise GuestConflict(f"VM '{self.name}': research run {run_id} has completed")
        self._set(run_id, status=ResearchStatus.ACTIVE, stop_reason=None)
        self._event(run_id, ResearchEventKind.STATUS, status="active")
        return self.views[run_id]

    def research_fetches(self, wait_s: int = 10) -> FetchRequestList:
        self._check("research_fetches")
        with self.changed:
            self.changed.wait_for(lambda: any(r.fetch_id not in self.handed for r in self.queue),
                                  min(wait_s, 0.2))
            fresh = [r for r in self.queue if r.fetch_id not in self.handed]
            self.handed.update(r.fetch_id for r in fresh)
        return FetchRequestList(requests=fresh)

    def research_answer(self, fetch_id: str, result: FetchResult,
                        timeout_s: float = 120) -> bool:
        self._check("research_answer")
        with self.changed:
            if fetch_id not in self.handed:
                raise GuestNotFound(f"no fetch request '{fetch_id}'")
            self.answers[fetch_id] = result
            self.changed.notify_all()
        return True

    def corpus_add(self, doc: CorpusDocumentIn, timeout_s: float = 600) -> CorpusDocument:
        self._check("corpus_add")
        self.sent.append(doc)
        added = CorpusDocument(doc_id=uuid.uuid4().hex, ref=doc.ref, title=doc.title or doc.ref,
                               format=doc.format, kind=doc.kind, chars=len(doc.content_b64),
                               added_at=time.time())
        self.documents.append(added)
        return added

    def corpus_list(self, timeout_s: float = 30) -> CorpusList:
        self._check("corpus_list")
        return CorpusList(documents=self.documents)

    def corpus_remove(self, doc_id: str, timeout_s: float = 30) -> CorpusDocument:
        self._check("corpus_remove")
        for doc in self.documents:
            if doc.doc_id == doc_id:
                self.documents.remove(doc)
                return doc
        raise GuestNotFound(f"no corpus document '{doc_id}'")


@pytest.fixture
def agent(host: Host, image: ImageManifest, settings: Settings, web: Site) -> ResearchAgent:
    """The research VM (on the test driver) with the scripted agent; its web runs read
    the loopback site's page A."""
    write_image(settings, RESEARCH_IMAGE, Flavour.RESEARCH)
    scripted = ResearchAgent("research", page=web.url + "/a.html")
    agents_of(host).made["research"] = scripted
    host.vms.create("research", Subsystem.RESEARCH, wait=False)
    host.research.retry_wait_s = 0.0
    host.research.proxy.poll_wait_s = 1
    return scripted


def test_without_a_research_vm_start_is_refused_in_one_line(host: Host) -> None:
    with pytest.raises(Conflict) as caught:
        host.research.start("What is a heap?")
    assert caught.value.message == ("no research VM: create it with "
                                    "'somnus vm create research --subsystem research'")
    with pytest.raises(InvalidInput, match=r"^research request: depth: "):
        host.research.start("What is a heap?", depth=9)


def test_web_research_needs_an_allowed_host(host: Host, agent: ResearchAgent) -> None:
    with pytest.raises(InvalidInput) as caught:
        host.research.start("What is new in Python?", sources=SourceScope.WEB)
    assert caught.value.message == ("web research needs an allowed host: "
                                    "'somnus research allow HOST'")
    assert "research_start" not in agent.calls


def test_a_followed_web_run_is_served_recorded_and_its_report_cached(
        host: Host, agent: ResearchAgent, web: Site) -> None:
    svc = host.research
    svc.allow(web.host)
    view = svc.start("What is zanzibarite?", sources=SourceScope.WEB, depth=1)
    assert view.run_id.startswith("r-") and len(view.run_id) == 10
    row = svc.store.run(view.run_id)
    assert (row.status, row.vm, row.question) == (ResearchStatus.ACTIVE, "research",
                                                   "What is zanzibarite?")
    events = list(svc.follow(view.run_id))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    source = next(e for e in events if e.kind is ResearchEventKind.SOURCE)
    assert source.message == "Alpha"  # the page came through the proxy
    (fetched,) = [e for e in svc.fetch_log(20, view.run_id) if e.reason != "robots.txt"]
    assert (fetched.target, fetched.vm, fetched.allowed) == (web.url + "/a.html", "research",
                                                            True)
    row = svc.store.run(view.run_id)
    assert row.status is ResearchStatus.COMPLETED and row.report_json
    # The VM goes away; the host still has the run and its report.
    host.vms.stop("research", force=True)
    calls = len(agent.calls)
    assert svc.report(view.run_id).title == "On Alpha"
    assert svc.status(view.run_id).status is ResearchStatus.COMPLETED
    assert [v.run_id for v in svc.runs()] == [view.run_id]
    assert list(svc.follow(view.run_id)) == []  # finished, VM off: nothing to replay
    assert agent.calls[calls:] == []
    with pytest.raises(NotFound, match="no research run 'r-00000000'"):
        svc.status("r-00000000")


def test_following_survives_a_broken_stream_and_a_swap(
        host: Host, agent: ResearchAgent, web: Site) -> None:
    svc = host.research
    svc.allow(web.host)
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)  # in the foreground
    view = svc.start("What is zanzibarite?", sources=SourceScope.BOTH)  # research activated
    assert host.store.foreground() == "research"
    agent.break_after = 2
    agent.on_break = lambda: host.swap.activate("chat")  # swapped out meanwhile
    notes: list[str] = []
    events = list(svc.follow(view.run_id, progress=notes.append))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]  # none lost, none twice
    assert agent.calls.count("research_events") == 2
    assert any("following again (1/5)" in n for n in notes)
    assert host.store.foreground() == "research"  # brought back to follow on
    assert svc.store.run(view.run_id).status is ResearchStatus.COMPLETED
    # From the middle: only what came after.
    assert [e.seq for e in svc.follow(view.run_id, after=3)] == [4, 5]


def test_a_stream_that_keeps_breaking_gives_up(host: Host, agent: ResearchAgent) -> None:
    svc = host.research
    view = svc.start("What is a heap?")

    def broken(*_args: Any, **_kw: Any) -> Iterator[ResearchEvent]:
        agent.calls.append("research_events")
        raise GuestError("VM 'research': its agent does not answer")
        yield  # a generator, as the client's is

    agent.research_events = broken  # type: ignore[method-assign]
    with pytest.raises(GuestError, match="does not answer"):
        list(svc.follow(view.run_id))
    assert agent.calls.count("research_events") == 6  # the first try and 5 more


def test_cancel_resume_and_the_corpus(host: Host, agent: ResearchAgent, tmp_path: Path,
                                      web: Site) -> None:
    svc = host.research
    view = svc.start("What is a heap?", mode=ResearchMode.QUICK)
    assert svc.cancel(view.run_id).status is ResearchStatus.CANCELLED
    assert svc.store.run(view.run_id).status is ResearchStatus.CANCELLED
    assert svc.resume(view.run_id).status is ResearchStatus.ACTIVE
    with pytest.raises(Conflict, match="has not finished"):
        svc.report(view.run_id)
    folder = tmp_path / "papers"
    (folder / "deep" / ".git").mkdir(parents=True)
    (folder / "a.md").write_text("# A")
    (folder / "deep" / "b.pdf").write_bytes(b"%PDF-1.4")
    (folder / "deep" / ".git" / "c.txt").write_text("hidden")
    (folder / "logo.png").write_bytes(b"\x89PNG")
    notes: list[str] = []
    added = svc.corpus_add(str(folder), notes.append)
    assert [(d.ref, d.format) for d in added] == [
        (str(folder / "a.md"), DocumentFormat.MARKDOWN),
        (str(folder / "deep" / "b.pdf"), DocumentFormat.PDF)]
    assert any("skipped" in n and "logo.png" in n for n in notes)
    with pytest.raises(NotFound, match="no such file or folder"):
        svc.corpus_add(str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="not on the research allow-list"):
        svc.corpus_add(web.url + "/a.html")
    svc.allow(web.host)
    (page,) = svc.corpus_add(web.url + "/a.html")
    assert (page.ref, page.format, page.title) == (web.url + "/a.html", DocumentFormat.HTML,
                                                   "Alpha")
    assert len(svc.corpus_list().documents) == 3
    assert svc.corpus_remove(page.doc_id).doc_id == page.doc_id


def test_serve_fetches_answers_the_queue_only_while_the_vm_runs(
        host: Host, agent: ResearchAgent, web: Site) -> None:
    svc = host.research
    svc.allow(web.host)
    request = FetchRequest(fetch_id="f1", run_id="r-00000009", kind=FetchKind.SEARCH,
                           query="zanzibarite")
    svc.crawl(web.host)
    with agent.changed:
        agent.queue.append(request)
    stop = threading.Event()
    thread = threading.Thread(target=svc.serve_fetches, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        with agent.changed:
            assert agent.changed.wait_for(lambda: "f1" in agent.answers, 10)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [r.url for r in agent.answers["f1"].results] == [web.url + "/a.html"]


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cli_host: None) -> Path:
    monkeypatch.setenv("SOMNUS_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("SOMNUS_CACHE", str(tmp_path / "cli-cache"))
    return tmp_path / "cli-home"


def test_cli_help_allow_allowed_disallow(cli_home: Path) -> None:
    from cli import app

    runner = CliRunner()
    helped = runner.invoke(app, ["research", "--help"])
    assert helped.exit_code == 0 and "somnus research start" in helped.stdout
    for command in ("start", "report", "allow", "corpus"):
        result = runner.invoke(app, ["research", command, "--help"])
        assert result.exit_code == 0, result.output
    allowed = runner.invoke(app, ["research", "allow", "HTTPS://Example.org/wiki"])
    assert allowed.exit_code == 0 and "research may fetch from example.org" in allowed.stdout
    assert runner.invoke(app, ["research", "allow", "127.0.0.1:8765"]).exit_code == 0
    listed = runner.invoke(app, ["research", "allowed", "--json"])
    assert [h["host"] for h in json.loads(listed.stdout)] == ["127.0.0.1:8765", "example.org"]
    gone = runner.invoke(app, ["research", "disallow", "example.org"])
    assert gone.exit_code == 0 and "no longer" in gone.stdout
    again = runner.invoke(app, ["research", "disallow", "example.org"])
    assert isinstance(again.exception, NotFound)
    assert json.loads(runner.invoke(app, ["research", "log", "--json"]).stdout) == []
    assert "no research runs yet" in runner.invoke(app, ["research", "list"]).stdout


def test_cli_start_without_a_research_vm_fails_in_one_line(
        cli_home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import main

    monkeypatch.setattr(sys, "argv", ["somnus", "research", "start", "What is a heap?"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 5  # Conflict
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines() == [
        "error: no research VM: create it with 'somnus vm create research --subsystem "
        "research'"]


# -- the REST API --------------------------------------------------------------------------


def test_api_allow_list_log_and_refusals(api: TestClient) -> None:  # noqa: F811
    assert api.get("/research/runs").json() == {"runs": []}
    made = api.post("/research/allowed", json={"host": "Example.ORG:443"})
    assert made.status_code == 201 and made.json()["host"] == "example.org"
    assert [h["host"] for h in api.get("/research/allowed").json()] == ["example.org"]
    assert api.post("/research/allowed", json={"host": "not a host"}).status_code == 422
    assert api.delete("/research/allowed/example.org").status_code == 204
    assert api.delete("/research/allowed/example.org").status_code == 404
    assert api.get("/research/log", params={"limit": 5}).json() == []
    missing = api.get("/research/runs/r-00000000")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    assert api.get("/research/runs/r-00000000/events").status_code == 404
    assert api.get("/research/runs/Bad_Id").status_code == 422
    no_vm = api.post("/research/runs", json={"question": "What is a heap?"})
    assert no_vm.status_code == 409 and "--subsystem research" in no_vm.json()["detail"]
    assert api.get("/research/corpus").status_code == 409


def test_api_runs_stream_their_events_and_export_reports(
        api: TestClient, auth: dict[str, str], agent: ResearchAgent,  # noqa: F811
        web: Site) -> None:
    api.post("/research/allowed", json={"host": web.host})
    started = api.post("/research/runs", json={"question": "What is zanzibarite?",
                                               "sources": "web", "depth": 1.0})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    assert started.headers["location"] == f"/research/runs/{run_id}"
    stream = api.get(f"/research/runs/{run_id}/events")
    assert stream.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in stream.text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("id: 1\ndata: ") and blocks[-1] == "data: [DONE]"
    assert len(blocks) == 6
    assert api.get(f"/research/runs/{run_id}").json()["status"] == "completed"
    html = api.get(f"/research/runs/{run_id}/report", params={"format": "html"})
    assert html.headers["content-type"].startswith("text/html") and "On Alpha" in html.text
    markdown = api.get(f"/research/runs/{run_id}/report", params={"format": "markdown"})
    assert markdown.text.startswith("# On Alpha")
    assert api.get(f"/research/runs/{run_id}/report").json()["run_id"] == run_id
    assert api.post(f"/research/runs/{run_id}/resume").status_code == 409
    after = api.get(f"/research/runs/{run_id}/events", params={"after": 4}).text
    assert after.startswith("id: 5\n")
    # Every event of the stream as the document describes it.
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, config=SchemathesisConfig())
    replay = _validated(schema, auth, "/research/runs/{run_id}/events", "GET",
                        path_parameters={"run_id": run_id}, query={"after": 2})
    assert replay.startswith("id: 3\n") and replay.rstrip().endswith("data: [DONE]")
    log = api.get("/research/log", params={"run_id": run_id}).json()
    assert [e["target"] for e in log] == [web.url + "/a.html", web.url + "/robots.txt"]


def test_cli_follows_a_run_and_exports_its_report(
        host: Host, agent: ResearchAgent, web: Site, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.research
    from cli import app

    monkeypatch.setattr(cli.research, "host", lambda: host)
    runner = CliRunner()
    host.research.allow(web.host)
    started = runner.invoke(app, ["research", "start", "What is zanzibarite?", "--sources", "web",
                                  "--role", "analyst=Skeptic", "--depth", "1"])
    assert started.exit_code == 0, started.output
    assert "On Alpha" in started.stdout and "read [1]: Alpha" in started.stderr
    (run,) = host.research.runs()
    assert run.request.roles == {"analyst": "Skeptic"} and run.request.depth == 1
    status = json.loads(runner.invoke(app, ["research", "status", run.run_id, "--json"]).stdout)
    assert status["status"] == "completed"
    assert run.run_id in runner.invoke(app, ["research", "list"]).stdout
    assert "On Alpha" in runner.invoke(app, ["research", "show", run.run_id]).stdout
    target = tmp_path / "report.html"
    exported = runner.invoke(app, ["research", "report", run.run_id, "-o", str(target)])
    assert exported.exit_code == 0 and target.read_text().startswith("<!DOCTYPE html>")
    markdown = runner.invoke(app, ["research", "report", run.run_id, "--format", "md"])
    assert markdown.stdout.startswith("# On Alpha\n")
    bad = runner.invoke(app, ["research", "start", "q?!", "--role", "boss=X"])
    assert isinstance(bad.exception, InvalidInput) and "SLOT=ROLE" in str(bad.exception)
    detached = runner.invoke(app, ["research", "start", "What is a heap?", "--detach", "--json"])
    second = json.loads(detached.stdout)["run_id"]
    cancelled = runner.invoke(app, ["research", "cancel", second, "--yes", "--json"])
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    listed = runner.invoke(app, ["research", "corpus", "list", "--json"])
    assert json.loads(listed.stdout) == {"documents": []}
    logged = json.loads(runner.invoke(app, ["research", "log", "--json"]).stdout)
    assert any(e["target"] == web.url + "/a.html" for e in logged)
