"""The research VM for real: a corpus read and indexed inside the VM (HTML and PDF), runs
that cite verbatim, "the web" through the host's fetch proxy and its allow-list, and a run
that resumes after its follower was killed, its VM swapped out and its agent restarted.

"The web" is a few pages of Debian's Python manual (``python3-doc``) served on loopback.
Under TCG the VM embeds about a page a minute and a model turn takes minutes, so the pages
are short ones and the runs have ``max_model_calls=0``: every stage takes its deterministic
fallback, which is what a run does when its budget is spent. The model's side of the
pipeline is tested on the host with the real model (``tests/unit/test_research_pipeline.py``);
``bench.research`` times both.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from core.config import Settings
from core.errors import InvalidInput
from guest_agent.protocol import Subsystem
from guest_agent.protocol.research import (
    DocumentFormat,
    ResearchEventKind,
    ResearchMode,
    ResearchReport,
    ResearchStatus,
    SourceKind,
    SourceScope,
)
from guest_agent.research.text import extract_text
from images.builder import build_image
from images.recipe import Flavour
from orchestrator.host import Host
from orchestrator.research.service import ResearchService
from tests.browser import screenshot as save_view
from tests.browser import visible, wait_for
from tests.documents import tiny_pdf
from tests.vm.cli import somnus
from tests.vm.conftest import VM_NAME, AppServer

pytestmark = pytest.mark.vm

RESEARCH_VM = "research"
DOCS = Path("/usr/share/doc/python3-doc/html")
# Short pages: every page a run reads is embedded in the VM, under TCG.
PAGE = "about.html"
SITE = ("howto/index.html", "howto/cporting.html", "copyright.html")
PDF_TEXT = "Somnus keeps every subsystem in a VM"


class DocsServer:
    """A loopback HTTP server over a folder, counting the requests it gets."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                seen.append(self.path)

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{self.host}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsServer]:
    """A few pages of the manual, as they are (links to pages not served answer 404)."""
    root = tmp_path_factory.mktemp("site")
    for page in SITE:
        (root / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DOCS / page, root / page)
    server = DocsServer(root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def research(host: Host, settings: Settings) -> Iterator[ResearchService]:
    build_image(settings, progress=print, flavour=Flavour.RESEARCH)
    host.vms.create(RESEARCH_VM, Subsystem.RESEARCH, memory_mib=1024, progress=print)
    try:
        yield host.research
    finally:
        host.vms.delete(RESEARCH_VM)
        if host.store.find_vm(VM_NAME) is not None:
            host.swap.activate(VM_NAME)


def page_text(path: Path) -> str:
    return extract_text(path.read_bytes(), DocumentFormat.HTML)[0]


def assert_cited_verbatim(report: ResearchReport, texts: dict[str, str]) -> int:
    """Every citation's quote occurs in its source's text (``texts``: ref → text); returns
    how many citations there were."""
    by_n = {s.n: s for s in report.sources}
    cited = 0
    for section in report.sections:
        for claim in section.claims:
            for citation in claim.citations:
                source = by_n[citation.n]
                assert citation.quote in texts[source.ref], (citation, source.ref)
                cited += 1
    assert cited >= 1, report
    return cited


def test_the_corpus_is_read_and_indexed_in_the_vm(research: ResearchService,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(DOCS / PAGE, folder / "about.html")
    (folder / "notes.pdf").write_bytes(tiny_pdf(PDF_TEXT))
    (folder / "picture.png").write_bytes(b"\x89PNG not a document")
    added = research.corpus_add(str(folder), progress=print)
    assert sorted(d.format for d in added) == [DocumentFormat.HTML, DocumentFormat.PDF]
    listed = {d.ref: d for d in research.corpus_list().documents}
    pdf = next(d for ref, d in listed.items() if ref.endswith("notes.pdf"))
    assert pdf.chars >= len(PDF_TEXT)  # pdftotext, in the VM
    html = next(d for ref, d in listed.items() if ref.endswith("about.html"))
    assert html.title.startswith("About these documents")


def test_a_quick_run_over_the_corpus_cites_its_page_verbatim(research: ResearchService,
                                                             host: Host) -> None:
    view = research.start("Which tools are Python's documents written and built with?",
                          mode=ResearchMode.QUICK, sources=SourceScope.CORPUS,
                          max_model_calls=0, progress=print)
    events = list(research.follow(view.run_id))
    assert events[-1].kind is ResearchEventKind.STATUS, events[-1]
    assert research.status(view.run_id).status is ResearchStatus.COMPLETED
    report = research.report(view.run_id)
    assert any(s.ref.endswith("about.html") for s in report.sources), report.sources
    known = {"about.html": page_text(DOCS / PAGE),
             "notes.pdf": extract_text(tiny_pdf(PDF_TEXT), DocumentFormat.PDF)[0]}
    texts = {d.ref: known[Path(d.ref).name] for d in research.corpus_list().documents}
    assert_cited_verbatim(report, texts)
    # The host keeps the report: it can be exported with the VM off.
    assert host.research.store.run(view.run_id).report_json


def test_the_proxy_refuses_a_host_not_allowed_and_logs_it(research: ResearchService,
                                                          docs: DocsServer) -> None:
    other = DocsServer(DOCS)
    try:
        with pytest.raises(InvalidInput, match="not on the research allow-list"):
            research.corpus_add(other.url(PAGE), progress=print)
        assert other.requests == []  # nothing reached the host that is not allowed
        refused = [e for e in research.fetch_log(limit=20) if not e.allowed]
        assert any(other.host in e.target for e in refused), refused
    finally:
        other.close()


def test_a_web_run_reads_allowed_pages_through_the_host(research: ResearchService,
                                                        docs: DocsServer) -> None:
    research.allow(docs.host)
    assert research.crawl(docs.url("howto/index.html"), max_pages=25) >= 2
    view = research.start("Porting extension modules to Python 3",
                          mode=ResearchMode.QUICK, sources=SourceScope.WEB,
                          max_sources=1, max_model_calls=0, progress=print)
    list(research.follow(view.run_id))
    report = research.report(view.run_id)
    web = [s for s in report.sources if s.kind is SourceKind.WEB]
    assert web and all(s.ref.startswith(f"http://{docs.host}/") for s in web), report.sources
    texts = {s.ref: page_text(DOCS / s.ref.split(docs.host + "/", 1)[1]) for s in web}
    assert_cited_verbatim(report, texts)
    assert any(e.allowed and docs.host in e.target for e in research.fetch_log(limit=50))


def test_a_run_resumes_after_a_swap_an_agent_restart_and_a_killed_follower(
        research: ResearchService, host: Host, docs: DocsServer,
        vm_env: dict[str, str]) -> None:
    """A web run started detached waits for the host's fetch proxy (nobody follows it):
    swap its VM out and back, restart its agent, kill a follower mid-way; following again
    finishes the run, and no stage that had finished ran twice."""
    # Nobody may serve the queue: an earlier test's follower ends its last long poll (up to
    # 30 s after it stopped), and would answer this run's fetch if it were still in one.
    deadline = time.monotonic() + 60
    while any(t.name.startswith("research-fetch-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "an earlier follower still polls the fetch queue"
        time.sleep(0.5)
    started = somnus(vm_env, "research", "start", "Copyright of the Python documentation",
                     "--mode", "quick", "--sources", "web", "--max-sources", "1",
                     "--max-calls", "0", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    deadline = time.monotonic() + 300
    while research.status(run_id).status is not ResearchStatus.PAUSED:
        assert time.monotonic() < deadline, research.status(run_id)
        time.sleep(2)
    with host.vms.changing():  # swapped out: RAM and device state to disk, QEMU gone
        host.lifecycle.save(host.store.get_vm(RESEARCH_VM), "test: swapped out mid-run")
    host.swap.activate(RESEARCH_VM)
    assert host.vms.run(RESEARCH_VM, "sudo systemctl restart somnus-agent").exit_code == 0
    follower = subprocess.Popen(
        [sys.executable, "-c", "from cli import main; main()", "research", "status", run_id,
         "--follow"], env={**os.environ, **vm_env}, stderr=subprocess.PIPE, text=True)
    time.sleep(20)
    follower.send_signal(signal.SIGKILL)  # the orchestrator's follower dies mid-run
    follower.wait(30)
    list(research.follow(run_id))
    assert research.status(run_id).status is ResearchStatus.COMPLETED
    every = list(research.follow(run_id))  # a finished run: all its events, from the first
    started = [e.data.get("key") for e in every if e.kind is ResearchEventKind.STAGE]
    finished = [e.data.get("key") for e in every if e.kind is ResearchEventKind.STAGE_DONE]
    assert len(finished) == len(set(finished)), finished  # no finished stage ran twice
    # Only the stage it was waiting in when the agent restarted began again.
    assert sorted({k for k in started if started.count(k) > 1}) == ["search-1"], started
    assert any("resumed" in e.message for e in every), [e.message for e in every]
    report = research.report(run_id)
    assert_cited_verbatim(report, {docs.url(page): page_text(DOCS / page) for page in SITE})


def test_the_cli_exports_the_report_as_html(research: ResearchService,
                                            vm_env: dict[str, str], tmp_path: Path) -> None:
    run = next(r for r in research.runs() if r.status is ResearchStatus.COMPLETED)
    out = tmp_path / "report.html"
    done = somnus(vm_env, "research", "report", run.run_id, "--format", "html",
                  "--output", str(out))
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert 'id="src-1"' in html and "<blockquote>" in html
    listed = somnus(vm_env, "research", "list", "--json")
    assert run.run_id in {r["run_id"] for r in json.loads(listed.stdout)["runs"]}


def test_the_app_shows_a_runs_progress_and_opens_its_citations(
        research: ResearchService, app_page: WebDriver, app_server: AppServer) -> None:
    page = app_page
    page.get(app_server.base + "/#/research")
    visible(page, "#research-question").send_keys(
        "Which tools are Python's documents written and built with?")
    Select(page.find_element(By.ID, "research-mode")).select_by_value("quick")
    page.find_element(By.CSS_SELECTOR, "#research-budgets summary").click()
    visible(page, "#research-max-calls").send_keys("0")  # the stages' fallbacks: fast
    page.find_element(By.ID, "research-start").click()
    seen: list[str] = []

    def progressed(d: WebDriver) -> bool:
        lines = d.find_elements(By.ID, "research-progress")
        if lines and lines[0].text not in seen:
            seen.append(lines[0].text)
        return bool(d.find_elements(By.CSS_SELECTOR, "#research-report button.cite"))
    wait_for(page, progressed, 600, "the report")
    done = [li.get_attribute("data-stage") for li in
            page.find_elements(By.CSS_SELECTOR, "#research-stages li.done")]
    assert {"brief", "search", "notes", "report"} <= set(done), done
    assert len(seen) >= 3, seen  # the progress line moved while the run ran
    cite = page.find_element(By.CSS_SELECTOR, "#research-report button.cite")
    cite.click()
    panel = page.find_element(By.ID, cite.get_attribute("aria-controls"))
    quote = panel.find_element(By.CSS_SELECTOR, "blockquote").text
    assert quote and cite.get_attribute("aria-expanded") == "true"
    run_id = page.current_url.rsplit("/", 1)[1]
    report = research.report(run_id)
    quotes = {c.quote for s in report.sections for cl in s.claims for c in cl.citations}
    assert " ".join(quote.split()) in {" ".join(q.split()) for q in quotes}
    save_view(page, "vm-research-report")
