"""The research VM's agent side: text extraction, the fetch broker, the run manager, the
corpus, and the research routes through a real agent app."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from guest_agent.protocol import Subsystem
from guest_agent.protocol.research import (
    CorpusDocumentIn,
    DocumentFormat,
    FetchKind,
    FetchRequest,
    FetchResult,
    ResearchEventKind,
    ResearchMode,
    ResearchReport,
    ResearchRequest,
    ResearchStatus,
    SearchResult,
    SourceKind,
    StopReason,
)
from guest_agent.research.broker import FetchBroker
from guest_agent.research.corpus import Corpus, DocumentNotFound
from guest_agent.research.folder import Cancelled, RunFolder
from guest_agent.research.modes import BadResearchRequest
from guest_agent.research.pipeline import WebUnavailable
from guest_agent.research.runs import ResearchRuns, RunConflict, RunNotFound
from guest_agent.research.text import UnreadableDocument, extract_text, format_for
from guest_agent.runtime import ModelRuntime
from tests.documents import tiny_pdf
from tests.unit.conftest import AUTH, ClientFactory

PYDOC = Path("/usr/share/doc/python3-doc/html")
CONTROLFLOW = PYDOC / "tutorial" / "controlflow.html"
MARKDOWN = """# Tea brewing

Green tea is brewed with water at about 80 degrees Celsius for two minutes.

Black tea takes boiling water and steeps for four minutes.
"""


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- text ------------------------------------------------------------------------------------


def test_html_text_drops_scripts_and_keeps_paragraphs() -> None:
    page = b"""<!doctype html><html><head><title>A &amp; B</title>
    <style>p { color: red }</style><script>var x = "<p>not text</p>";</script></head>
    <body><nav><a href="/">Home</a> <ul><li>Menu</li></ul></nav>
    <h1>Heading</h1><p>First   paragraph,
    wrapped &lt;here&gt; &eacute;t&#233;.</p><div>Second<br>line</div>
    <pre>  code
    indented</pre><table><tr><td>a</td><td>b</td></tr></table></body></html>"""
    text, title = extract_text(page, DocumentFormat.HTML)
    assert title == "A & B"
    assert "not text" not in text and "color" not in text
    assert "Home" not in text and "Menu" not in text
    assert text.startswith("Heading\n\nFirst paragraph, wrapped <here> été.\n\nSecond\nline")
    assert "  code\n    indented" in text  # preformatted text as it was
    assert "a b" in text


def test_html_title_falls_back_to_h1_and_meta_charset() -> None:
    page = '<meta charset="latin-1"><h1>Caf\xe9</h1><p>x</p>'.encode("latin-1")
    assert extract_text(page, DocumentFormat.HTML) == ("Café\n\nx", "Café")


def test_python_manual_page_is_readable() -> None:
    text, title = extract_text(CONTROLFLOW.read_bytes(), DocumentFormat.HTML)
    assert title is not None and "Control Flow" in title
    assert "for Statements" in text
    assert ">>> for w in words:\n...     print(w, len(w))" in text
    assert "\n\n\n" not in text and "  " not in text.split(">>>")[0]


def test_markdown_and_plain_text() -> None:
    text, title = extract_text(MARKDOWN.encode(), DocumentFormat.MARKDOWN)
    assert title == "Tea brewing" and text == MARKDOWN.strip()
    text, title = extract_text(b"\xef\xbb\xbfline one\r\n\r\n\r\n\r\nline \xff two",
                               DocumentFormat.TEXT)
    assert (text, title) == ("line one\n\nline \ufffd two", None)
    with pytest.raises(UnreadableDocument, match=r"notes\.txt has no text"):
        extract_text(b" \n\n ", DocumentFormat.TEXT, name="notes.txt")


def test_pdf_text_and_a_corrupt_pdf() -> None:
    text, title = extract_text(tiny_pdf("Hello from a tiny PDF"), DocumentFormat.PDF)
    assert (text, title) == ("Hello from a tiny PDF", None)
    with pytest.raises(UnreadableDocument) as caught:
        extract_text(b"%PDF-1.4\ngarbage\n", DocumentFormat.PDF, name="bad.pdf")
    message = str(caught.value)
    assert message.startswith("bad.pdf is not a readable PDF: ") and "\n" not in message


def test_format_for() -> None:
    assert format_for("https://x.org/a", None) is DocumentFormat.HTML
    assert format_for("https://x.org/a.pdf", None) is DocumentFormat.PDF
    assert format_for("https://x.org/a", "application/pdf") is DocumentFormat.PDF
    assert format_for("notes/a.md", None) is DocumentFormat.MARKDOWN
    assert format_for("README", None) is DocumentFormat.TEXT
    assert format_for("x.rst", "text/plain; charset=utf-8") is DocumentFormat.TEXT
    assert format_for("page.HTM", None) is DocumentFormat.HTML
    assert format_for("photo.png", None) is None


# -- the fetch broker --------------------------------------------------------------------------


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn(*args)`` in a thread; its result or exception lands in the dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn(*args)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_broker_fetch_answered_by_the_host() -> None:
    broker = FetchBroker()
    thread, out = in_thread(broker.fetch, "run-1", "https://x.org/")
    [request] = broker.pending(wait_s=5)
    assert (request.run_id, request.kind, request.url) == ("run-1", FetchKind.FETCH,
                                                          "https://x.org/")
    assert broker.answer(request.fetch_id, FetchResult(ok=True, body_b64=b64(b"hi")))
    thread.join(5)
    assert out["result"].body_b64 == b64(b"hi")
    assert not broker.answer(request.fetch_id, FetchResult(ok=True))  # answered already
    assert not broker.answer("nobody", FetchResult(ok=True))


def test_broker_search_results_and_refusals() -> None:
    broker = FetchBroker()
    thread, out = in_thread(broker.search, "run-1", "tea", 1)
    [request] = broker.pending(wait_s=5)
    assert (request.kind, request.query, request.limit) == (FetchKind.SEARCH, "tea", 1)
    broker.answer(request.fetch_id, FetchResult(ok=True, results=[
        SearchResult(url="https://a.org/"), SearchResult(url="https://b.org/")]))
    thread.join(5)
    assert [r.url for r in out["result"]] == ["https://a.org/"]
    # A refused search is the run's WebUnavailable; a refused fetch is returned as it is.
    thread, out = in_thread(broker.search, "run-1", "tea", 3)
    [request] = broker.pending(wait_s=5)
    broker.answer(request.fetch_id, FetchResult(ok=False, error="search is not configured"))
    thread.join(5)
    assert isinstance(out["error"], WebUnavailable)
    assert str(out["error"]) == "search is not configured"
    thread, out = in_thread(broker.fetch, "run-1", "https://no.org/")
    [request] = broker.pending(wait_s=5)
    broker.answer(request.fetch_id, FetchResult(ok=False, error="not allowed"))
    thread.join(5)
    assert out["result"].error == "not allowed"


def test_broker_times_out_and_tells_once_nobody_polls() -> None:
    told: list[tuple[str, str]] = []
    broker = FetchBroker(timeout_s=0.6, unpolled_s=0.1,
                         on_wait=lambda run: told.append(("wait", run)),
                         on_answer=lambda run: told.append(("answer", run)))
    started = time.monotonic()
    with pytest.raises(WebUnavailable, match="no answer from the host's fetch proxy in 1 s"):
        broker.fetch("run-1", "https://x.org/")
    assert 0.5 < time.monotonic() - started < 3
    assert told == [("wait", "run-1"), ("answer", "run-1")]
    assert broker.pending() == []  # a request given up on is gone


def test_broker_wait_ends_when_the_host_comes() -> None:
    told: list[str] = []
    broker = FetchBroker(unpolled_s=0.1, on_wait=told.append)
    thread, out = in_thread(broker.fetch, "run-1", "https://x.org/")
    deadline = time.monotonic() + 5
    while not told and time.monotonic() < deadline:
        time.sleep(0.02)
    assert told == ["run-1"]
    [request] = broker.pending()
    broker.answer(request.fetch_id, FetchResult(ok=True))
    thread.join(5)
    assert out["result"].ok and told == ["run-1"]


def test_broker_polling_host_is_not_waited_on() -> None:
    told: list[str] = []
    broker = FetchBroker(unpolled_s=0.2, on_wait=told.append)
    thread, out = in_thread(broker.fetch, "run-1", "https://x.org/")
    [request] = broker.pending(wait_s=5)
    time.sleep(0.5)  # in the host's hands: not "waiting for a host"
    broker.answer(request.fetch_id, FetchResult(ok=True))
    thread.join(5)
    assert told == [] and out["result"].ok


def test_broker_hands_out_again_after_the_lease() -> None:
    broker = FetchBroker(lease_s=0.2)
    thread, out = in_thread(broker.fetch, "run-1", "https://x.org/")
    [first] = broker.pending(wait_s=5)
    assert broker.pending(wait_s=0.05) == []  # leased
    time.sleep(0.3)
    [again] = broker.pending()
    assert again.fetch_id == first.fetch_id
    assert broker.answer(first.fetch_id, FetchResult(ok=True))
    thread.join(5)
    assert out["result"].ok


def test_broker_cancelled_run_stops_waiting() -> None:
    broker = FetchBroker()
    thread, out = in_thread(broker.fetch, "run-1", "https://x.org/")
    broker.pending(wait_s=5)
    assert broker.abandon("run-2") == 0
    assert broker.abandon("run-1") == 1
    thread.join(5)
    assert isinstance(out["error"], Cancelled)
    assert broker.waiting == 0


# -- the run manager -------------------------------------------------------------------------


class Step(BaseModel):
    n: int


class Control:
    """What the fake pipelines do: steps, a step that fails, a hold on each step."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.fail_at: int | None = None
        self.hold = threading.Event()
        self.hold.set()
        self.ran: list[tuple[str, int]] = []  # (run_id, step) as done
        self.at_step = threading.Event()  # set when a step starts (and waits on hold)


class FakePipeline:
    """A pipeline that persists numbered steps, and resumes after the ones done."""

    def __init__(self, folder: RunFolder, control: Control) -> None:
        self.folder = folder
        self.control = control

    def run(self) -> ResearchReport:
        folder, control = self.folder, self.control
        request = folder.request()
        folder.update(status=ResearchStatus.ACTIVE)
        for n in range(1, control.steps + 1):
            key = f"step-{n}"
            if folder.load_stage(key, Step) is not None:
                continue
            control.at_step.set()
            while not control.hold.wait(0.02):
                if folder.cancel_requested():
                    raise Cancelled("cancelled")
            if folder.cancel_requested():
                raise Cancelled("cancelled")
            if control.fail_at == n:
                raise RuntimeError(f"step {n} broke\nand a second line")
            folder.emit(ResearchEventKind.STAGE_DONE, key)
            folder.save_stage(key, Step(n=n))
            control.ran.append((request.run_id, n))
        report = ResearchReport(run_id=request.run_id, question=request.question,
                                mode=request.mode, title="t", summary="s", sections=[],
                                sources=[], created_at=time.time())
        folder.write_report(report)
        return report


def request(run_id: str, **kw: Any) -> ResearchRequest:
    return ResearchRequest(**{"run_id": run_id, "question": "What is tea?", **kw})


@pytest.fixture
def control() -> Control:
    return Control()


@pytest.fixture
def runs(tmp_path: Path, control: Control) -> Iterator[ResearchRuns]:
    manager = ResearchRuns(tmp_path / "runs", lambda folder: FakePipeline(folder, control))
    manager.recover()
    yield manager
    control.hold.set()
    manager.close()


def wait_status(runs: ResearchRuns, run_id: str, *statuses: ResearchStatus,
                timeout: float = 10) -> ResearchStatus:
    deadline = time.monotonic() + timeout
    while (status := runs.view(run_id).status) not in statuses:
        assert time.monotonic() < deadline, f"{run_id} is still {status}"
        time.sleep(0.02)
    return status


def test_runs_start_follow_report(runs: ResearchRuns, control: Control) -> None:
    control.hold.clear()
    first = runs.start(request("run-one"))
    assert first.status is ResearchStatus.PLANNING
    runs.start(request("run-two"))
    with pytest.raises(RunConflict, match="'run-one' exists"):
        runs.start(request("run-one"))
    with pytest.raises(RunConflict, match="queued"):
        runs.report("run-two")
    assert [v.run_id for v in runs.list()] == ["run-two", "run-one"]  # newest first
    control.hold.set()
    events = [e for e in runs.follow("run-one", poll_s=0.02) if e is not None]
    assert [e.message for e in events if e.kind is ResearchEventKind.STAGE_DONE] == [
        "step-1", "step-2", "step-3"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind is ResearchEventKind.STATUS and events[-1].data == {
        "status": "completed"}
    assert runs.view("run-one").status is ResearchStatus.COMPLETED
    assert runs.report("run-one").run_id == "run-one"
    # Following from the last event seen: nothing more, and the stream ends.
    assert list(runs.follow("run-one", after=events[-1].seq, poll_s=0.02)) == []
    wait_status(runs, "run-two", ResearchStatus.COMPLETED)
    assert control.ran == [("run-one", n) for n in (1, 2, 3)] + [("run-two", n)
                                                                 for n in (1, 2, 3)]
    with pytest.raises(RunNotFound):
        runs.view("no-such-run")
    with pytest.raises(RunNotFound):
        runs.view("../etc")


def test_follow_sends_keepalives_while_quiet(runs: ResearchRuns, control: Control) -> None:
    control.hold.clear()
    runs.start(request("run-one"))
    stream = runs.follow("run-one", poll_s=0.02, keepalive_s=0.1)
    assert next(stream) is None  # the run holds: nothing but a keepalive
    control.hold.set()
    rest = list(stream)
    assert rest[-1] is not None and rest[-1].data["status"] == "completed"


def test_runs_check_refuses_a_request(tmp_path: Path, control: Control) -> None:
    def check(req: ResearchRequest) -> None:
        if req.roles:
            raise KeyError("unknown role 'Bard'\nmore")

    runs = ResearchRuns(tmp_path, lambda folder: FakePipeline(folder, control), check=check)
    with pytest.raises(BadResearchRequest, match=r"^KeyError: unknown role 'Bard'$"):
        runs.start(request("run-one", roles={"analyst": "Bard"}))
    assert runs.list() == []


def test_failed_run_resumes_after_its_done_steps(runs: ResearchRuns, control: Control) -> None:
    control.fail_at = 2
    runs.start(request("run-one"))
    wait_status(runs, "run-one", ResearchStatus.ERROR)
    view = runs.view("run-one")
    assert view.error == "RuntimeError: step 2 broke"
    assert view.stop_reason is StopReason.ERROR and view.stages_done == ["step-1"]
    with pytest.raises(RunConflict, match="no report"):
        runs.report("run-one")
    control.fail_at = None
    resumed = runs.resume("run-one")
    assert resumed.status is ResearchStatus.PLANNING and resumed.error is None
    wait_status(runs, "run-one", ResearchStatus.COMPLETED)
    assert control.ran == [("run-one", 1), ("run-one", 2), ("run-one", 3)]
    with pytest.raises(RunConflict, match="already completed"):
        runs.resume("run-one")


def test_cancel_running_and_queued_runs(runs: ResearchRuns, control: Control) -> None:
    control.hold.clear()
    runs.start(request("run-one"))
    runs.start(request("run-two"))
    assert control.at_step.wait(5)
    with pytest.raises(RunConflict, match="running"):
        runs.resume("run-one")
    queued = runs.cancel("run-two")  # never started: cancelled at once
    assert queued.status is ResearchStatus.CANCELLED
    assert queued.stop_reason is StopReason.CANCELLED
    runs.cancel("run-one")  # running: it stops at its next step
    assert wait_status(runs, "run-one", ResearchStatus.CANCELLED) is ResearchStatus.CANCELLED
    assert runs.view("run-one").stop_reason is StopReason.CANCELLED
    assert control.ran == []
    assert runs.cancel("run-one").status is ResearchStatus.CANCELLED  # finished: as it is
    control.hold.set()
    runs.resume("run-two")
    assert wait_status(runs, "run-two", ResearchStatus.COMPLETED)


def test_waiting_for_the_host_pauses_the_run(runs: ResearchRuns, control: Control) -> None:
    control.hold.clear()
    runs.start(request("run-one"))
    assert control.at_step.wait(5)
    runs.waiting("run-one")
    view = runs.view("run-one")
    assert view.status is ResearchStatus.PAUSED
    [waiting] = [e for e in runs.events("run-one") if e.kind is ResearchEventKind.WAITING]
    assert "somnus research status run-one --follow" in waiting.message
    runs.waited("run-one")
    assert runs.view("run-one").status is ResearchStatus.ACTIVE


def test_recover_resumes_runs_cut_short(tmp_path: Path, control: Control) -> None:
    root = tmp_path / "runs"
    before = ResearchRuns(root, lambda folder: FakePipeline(folder, control))  # no worker
    before.start(request("run-one"))
    before.start(request("run-two"))
    folder = RunFolder(root / "run-one")  # cut short after its first step
    folder.update(status=ResearchStatus.ACTIVE)
    folder.save_stage("step-1", Step(n=1))
    RunFolder(root / "run-two").request_cancel()  # cancelled, stopped before it saw it
    after = ResearchRuns(root, lambda folder: FakePipeline(folder, control))
    try:
        assert after.recover() == ["run-one"]
        wait_status(after, "run-one", ResearchStatus.COMPLETED)
        assert control.ran == [("run-one", 2), ("run-one", 3)]
        assert any(e.message == "resumed after a restart" for e in after.events("run-one"))
        assert after.view("run-two").status is ResearchStatus.CANCELLED
    finally:
        after.close()


# -- the corpus ---------------------------------------------------------------------------------


def test_corpus_add_search_replace_remove(tmp_path: Path, agent_runtime: ModelRuntime) -> None:
    corpus = Corpus(tmp_path)
    corpus.attach(agent_runtime)
    try:
        page = corpus.add(CorpusDocumentIn(ref="tutorial/controlflow.html",
                                           format=DocumentFormat.HTML,
                                           content_b64=b64(CONTROLFLOW.read_bytes())))
        assert page.title.startswith("4. More Control Flow Tools")
        assert not page.replaced and page.chars == len(corpus.text(page.doc_id))
        tea = corpus.add(CorpusDocumentIn(ref="notes/tea.md", format=DocumentFormat.MARKDOWN,
                                          content_b64=b64(MARKDOWN.encode())))
        assert tea.title == "Tea brewing" and tea.kind is SourceKind.CORPUS
        passages = corpus.search("How long does green tea steep?", top_k=3)
        assert passages[0].doc_id == tea.doc_id and passages[0].ref == "notes/tea.md"
        passages += corpus.search("iterating over a sequence with a for statement", top_k=3)
        for p in passages:
            assert corpus.text(p.doc_id)[p.start:p.end] == p.text
        assert any(p.doc_id == page.doc_id for p in passages)
        # The same ref again replaces its document; the same text under another ref is
        # the document already there.
        newer = corpus.add(CorpusDocumentIn(
            ref="notes/tea.md", format=DocumentFormat.MARKDOWN,
            content_b64=b64(MARKDOWN.replace("two", "three").encode())))
        assert newer.replaced and newer.doc_id != tea.doc_id
        assert "three minutes" in corpus.text(newer.doc_id)
        same = corpus.add(CorpusDocumentIn(
            ref="notes/tea.md", format=DocumentFormat.MARKDOWN,
            content_b64=b64(MARKDOWN.replace("two", "three").encode())))
        assert same.replaced and same.doc_id == newer.doc_id
        copy = corpus.add(CorpusDocumentIn(
            ref="elsewhere/tea.md", format=DocumentFormat.MARKDOWN,
            content_b64=b64(MARKDOWN.replace("two", "three").encode())))
        assert (copy.doc_id, copy.ref) == (newer.doc_id, "notes/tea.md")
        assert corpus.find_ref("notes/tea.md") == newer.model_copy(update={"replaced": False})
        assert corpus.find_ref("elsewhere/tea.md") is None
        assert [d.ref for d in corpus.list()] == ["tutorial/controlflow.html", "notes/tea.md"]
        assert corpus.remove(newer.doc_id).ref == "notes/tea.md"
        with pytest.raises(DocumentNotFound):
            corpus.remove(newer.doc_id)
        assert corpus.find_ref("notes/tea.md") is None
        with pytest.raises(UnreadableDocument, match="not base64"):
            corpus.add(CorpusDocumentIn(ref="x.txt", format=DocumentFormat.TEXT,
                                        content_b64="***"))
    finally:
        corpus.close()
    reopened = Corpus(tmp_path)  # refs are found again after a restart
    try:
        found = reopened.find_ref("tutorial/controlflow.html")
        assert found is not None and found.doc_id == page.doc_id
    finally:
        reopened.close()


# -- through the agent's routes ------------------------------------------------------------------


def sse_events(lines: Iterator[str]) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]


def follow_run(client: Any, run_id: str) -> list[dict[str, Any]]:
    with client.stream("GET", f"/research/runs/{run_id}/events?follow=true",
                       headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.iter_lines())


def test_research_routes_refused_outside_the_research_vm(
        make_agent_client: ClientFactory) -> None:
    client, _ = make_agent_client()
    answer = client.post("/research/runs", json=request("run-one").model_dump(mode="json"),
                         headers=AUTH)
    assert answer.status_code == 409
    assert "--subsystem research" in answer.json()["error"]
    assert client.get("/research/fetches", headers=AUTH).status_code == 409


def test_corpus_run_cites_its_documents(make_agent_client: ClientFactory) -> None:
    client, app = make_agent_client(Subsystem.RESEARCH)
    added = client.post("/research/corpus", headers=AUTH, json=CorpusDocumentIn(
        ref="python/tutorial/controlflow.html", format=DocumentFormat.HTML,
        content_b64=b64(CONTROLFLOW.read_bytes())).model_dump(mode="json"))
    assert added.status_code == 200, added.text
    tea = client.post("/research/corpus", headers=AUTH, json=CorpusDocumentIn(
        ref="notes/tea.md", format=DocumentFormat.MARKDOWN,
        content_b64=b64(MARKDOWN.encode())).model_dump(mode="json")).json()
    listed = client.get("/research/corpus", headers=AUTH).json()["documents"]
    assert [d["ref"] for d in listed] == ["python/tutorial/controlflow.html", "notes/tea.md"]
    bad = client.post("/research/corpus", headers=AUTH, json={
        "ref": "x.pdf", "format": "pdf", "content_b64": b64(b"%PDF-1.4\nbroken")})
    assert bad.status_code == 400 and "x.pdf is not a readable PDF" in bad.json()["error"]

    body = request("for-loops", mode=ResearchMode.QUICK, max_model_calls=0,
                   question="How does the for statement iterate over a sequence in Python?")
    started = client.post("/research/runs", json=body.model_dump(mode="json"), headers=AUTH)
    assert started.status_code == 202, started.text
    assert client.post("/research/runs", json=body.model_dump(mode="json"),
                       headers=AUTH).status_code == 409
    events = follow_run(client, "for-loops")
    assert events[-1]["kind"] == "status" and events[-1]["data"]["status"] == "completed"
    view = client.get("/research/runs/for-loops", headers=AUTH).json()
    assert view["status"] == "completed" and view["last_event"] == events[-1]["seq"]
    assert [r["run_id"] for r in client.get("/research/runs", headers=AUTH).json()["runs"]
            ] == ["for-loops"]
    report = ResearchReport.model_validate(
        client.get("/research/runs/for-loops/report", headers=AUTH).json())
    corpus = app.state.agent.research.corpus
    sources = {s.n: s for s in report.sources}
    cited = [c for section in report.sections for claim in section.claims
             for c in claim.citations]
    assert cited, report
    for citation in cited:
        assert citation.quote in corpus.text(sources[citation.n].doc_id)
    assert {s.ref for s in report.sources} <= {"python/tutorial/controlflow.html",
                                               "notes/tea.md"}
    # The events after a seq, without following; a missing run; a bad id.
    later = client.get("/research/runs/for-loops/events?after=2", headers=AUTH)
    assert sse_events(later.iter_lines())[0]["seq"] == 3
    assert client.get("/research/runs/nope-nope", headers=AUTH).status_code == 404
    assert client.get("/research/runs/Bad_Id/report", headers=AUTH).status_code == 400
    assert client.post("/research/runs/for-loops/resume", headers=AUTH).status_code == 409
    removed = client.delete(f"/research/corpus/{tea['doc_id']}", headers=AUTH)
    assert removed.json()["ref"] == "notes/tea.md"
    assert client.delete(f"/research/corpus/{tea['doc_id']}", headers=AUTH).status_code == 404


def serve_fetches(client: Any, page: bytes, url: str, stop: threading.Event,
                  seen: list[FetchRequest]) -> None:
    """The host's fetch proxy, in a test: one search result, and the page for any fetch."""
    while not stop.is_set():
        polled = client.get("/research/fetches?wait=1", headers=AUTH)
        for request in [FetchRequest.model_validate(r) for r in polled.json()["requests"]]:
            seen.append(request)
            if request.kind is FetchKind.SEARCH:
                result = FetchResult(ok=True, results=[SearchResult(
                    url=url, title="More Control Flow Tools", snippet="for Statements")])
            else:
                result = FetchResult(ok=True, url=request.url, status=200,
                                     content_type="text/html; charset=utf-8",
                                     body_b64=b64(page))
            answer = client.post(f"/research/fetches/{request.fetch_id}", headers=AUTH,
                                 json=result.model_dump(mode="json"))
            assert answer.json() == {"accepted": True}


def test_web_run_fetches_through_the_host(make_agent_client: ClientFactory) -> None:
    client, app = make_agent_client(Subsystem.RESEARCH)
    url = "https://docs.python.org/3/tutorial/controlflow.html"
    stop, seen = threading.Event(), []
    proxy = threading.Thread(target=serve_fetches, daemon=True,
                             args=(client, CONTROLFLOW.read_bytes(), url, stop, seen))
    proxy.start()
    try:
        body = request("web-loops", mode=ResearchMode.QUICK, max_model_calls=0,
                       sources="web", question="How does Python's for statement iterate?")
        assert client.post("/research/runs", json=body.model_dump(mode="json"),
                           headers=AUTH).status_code == 202
        events = follow_run(client, "web-loops")
    finally:
        stop.set()
        proxy.join(10)
    assert events[-1]["data"]["status"] == "completed", events[-3:]
    assert {r.kind for r in seen} == {FetchKind.SEARCH, FetchKind.FETCH}
    report = ResearchReport.model_validate(
        client.get("/research/runs/web-loops/report", headers=AUTH).json())
    assert [s.ref for s in report.sources] == [url]
    assert report.sources[0].kind is SourceKind.WEB
    text = app.state.agent.research.corpus.text(report.sources[0].doc_id)
    cited = [c for section in report.sections for claim in section.claims
             for c in claim.citations]
    assert cited and all(c.n == 1 and c.quote in text for c in cited)
    assert client.post("/research/fetches/0123", headers=AUTH,
                       json={"ok": True}).status_code == 404
