"""Research runs: wall time, model calls, tokens, sources, and citation quality.

On the host (the default): the research VM's own service (``guest_agent.research``) runs
in this process on the real SmolLM2 over a corpus of Debian's Python manual
(``bench.pydoc``'s 36 pages). Its labelled questions each have their answer on one known
page; for each question a ``standard`` run is made, and the benchmark reports the share of
reports that cite that page and the share of cited quotes found verbatim in the cited
page's text (target: 100 %).

``--vm``: the same kind of run in a real research VM (a scratch home), over the tutorial
pages only, with ``--vm-calls`` model calls allowed (an in-VM model turn takes minutes
under TCG; 0 runs every stage on its deterministic fallback).

Prints one JSON line. Usage: python -m bench.research [--questions 10] [--vm]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.pydoc import DOC_ROOT, DocSet, load
from bench.swap import percentile
from bench.vmhome import log
from core.config import load_settings
from guest_agent.protocol import AgentConfig, AIModelConfiguration, Subsystem
from guest_agent.protocol.research import (
    CorpusDocumentIn,
    DocumentFormat,
    ResearchMode,
    ResearchReport,
    ResearchRequest,
    ResearchRunView,
)
from guest_agent.research.text import extract_text
from images.embedder import ensure_embedder

BREADTH = 2
DEPTH = 1
MAX_SOURCES = 4


def cited_quotes(report: ResearchReport) -> list[tuple[str, str]]:
    """(source ref, quote) of every citation in the report."""
    refs = {s.n: s.ref for s in report.sources}
    return [(refs[c.n], c.quote) for section in report.sections
            for claim in section.claims for c in claim.citations]


def quality(reports: list[tuple[str, ResearchReport]], root: Path) -> dict[str, float]:
    """Share of reports citing the labelled page; share of quotes verbatim in their page."""
    texts: dict[str, str] = {}

    def page(ref: str) -> str:
        if ref not in texts:
            texts[ref] = extract_text((root / ref).read_bytes(), DocumentFormat.HTML)[0]
        return texts[ref]

    hit = [any(ref == wanted for ref, _ in cited_quotes(r)) for wanted, r in reports]
    quotes = [quote in page(ref) for _, r in reports for ref, quote in cited_quotes(r)]
    return {"cites_labelled_page": round(sum(hit) / max(1, len(hit)), 3),
            "quotes_verbatim": round(sum(quotes) / max(1, len(quotes)), 3),
            "citations": len(quotes)}


def summary(views: list[ResearchRunView], walls: list[float]) -> dict[str, float]:
    calls = [v.usage.model_calls for v in views]
    tokens = [v.usage.tokens for v in views]
    return {"wall_s_p50": percentile(walls, 0.5), "wall_s_p95": percentile(walls, 0.95),
            "model_calls_mean": round(statistics.fmean(calls), 1),
            "tokens_mean": round(statistics.fmean(tokens), 1),
            "sources_read_mean": round(statistics.fmean(v.usage.sources_read for v in views), 1),
            "fallbacks_mean": round(statistics.fmean(v.usage.fallbacks for v in views), 1)}


def on_host(docs: DocSet, questions: int) -> dict[str, object]:
    from guest_agent.agent import Agent

    # The image's embedder (MiniLM, converted once and cached), as in the VM: without it
    # the agent would embed with the chat model, 25 times slower.
    model = AIModelConfiguration(n_threads=2, context_length=4096,
                                 embedding_model_path=str(ensure_embedder(load_settings())))
    with tempfile.TemporaryDirectory(prefix="somnus-bench-research-") as data:
        agent = Agent(AgentConfig(vm_name="bench", subsystem=Subsystem.RESEARCH,
                                  token="b" * 40, data_dir=data, model=model))
        agent.boot()
        assert agent.wait_ready(600), agent.error
        research = agent.research
        started = time.perf_counter()
        for ref in docs.pages:
            raw = (DOC_ROOT / ref).read_bytes()
            research.corpus.add(CorpusDocumentIn(
                ref=ref, format=DocumentFormat.HTML,
                content_b64=base64.b64encode(raw).decode()))
        log(f"corpus: {len(docs.pages)} pages in {time.perf_counter() - started:.1f} s")
        reports, views, walls = [], [], []
        for i, question in enumerate(docs.questions[:questions]):
            request = ResearchRequest(run_id=f"bench-{i:03d}", question=question.text,
                                      mode=ResearchMode.STANDARD, depth=DEPTH,
                                      breadth=BREADTH, max_sources=MAX_SOURCES)
            began = time.perf_counter()
            research.runs.start(request)
            for _ in research.runs.follow(request.run_id):
                pass
            walls.append(time.perf_counter() - began)
            views.append(research.runs.view(request.run_id))
            reports.append((question.page, research.runs.report(request.run_id)))
            log(f"{i + 1}/{questions}: {walls[-1]:.1f} s, {views[-1].usage.model_calls} calls,"
                f" cited {sorted({ref for ref, _ in cited_quotes(reports[-1][1])})}")
        agent.close()
    return {**summary(views, walls), **quality(reports, DOC_ROOT)}


def in_vm(docs: DocSet, questions: int, calls: int) -> dict[str, object]:
    from bench.vmhome import scratch_host
    from images.builder import build_image
    from images.recipe import Flavour

    tutorial = [q for q in docs.questions if q.page.startswith("tutorial/")][:questions]
    with scratch_host() as host:
        build_image(host.settings, flavour=Flavour.RESEARCH)
        log("creating the research VM")
        host.vms.create("research", Subsystem.RESEARCH, memory_mib=1024)
        with tempfile.TemporaryDirectory() as folder:
            for ref in {q.page for q in tutorial}:
                target = Path(folder) / ref
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((DOC_ROOT / ref).read_bytes())
            started = time.perf_counter()
            added = host.research.corpus_add(folder)
            log(f"corpus: {len(added)} pages in {time.perf_counter() - started:.1f} s")
        reports, views, walls = [], [], []
        for question in tutorial:
            began = time.perf_counter()
            view = host.research.start(question.text, mode=ResearchMode.STANDARD, depth=DEPTH,
                                       breadth=BREADTH, max_sources=MAX_SOURCES,
                                       max_model_calls=calls)
            for _ in host.research.follow(view.run_id):
                pass
            walls.append(time.perf_counter() - began)
            views.append(host.research.status(view.run_id))
            report = host.research.report(view.run_id)
            # Corpus refs are the paths the files had on the host: keep the manual's part.
            report = report.model_copy(update={"sources": [
                s.model_copy(update={"ref": s.ref.split(folder + "/", 1)[-1]})
                for s in report.sources]})
            reports.append((question.page, report))
            log(f"{len(walls)}/{len(tutorial)}: {walls[-1]:.1f} s")
    return {**summary(views, walls), **quality(reports, DOC_ROOT), "model_calls_allowed": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--vm", action="store_true", help="in a real research VM")
    parser.add_argument("--vm-calls", type=int, default=0,
                        help="model calls a run may make in the VM (minutes each under TCG)")
    args = parser.parse_args()
    docs = load()
    result: dict[str, object] = {"bench": "research", "mode": "standard", "breadth": BREADTH,
                                 "depth": DEPTH, "max_sources": MAX_SOURCES,
                                 "questions": args.questions}
    if args.vm:
        result.update(where="vm", **in_vm(docs, args.questions, args.vm_calls))
    else:
        result.update(where="host", **on_host(docs, args.questions))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
