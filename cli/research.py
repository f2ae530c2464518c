"""``somnus research``: research runs in the research VM, its corpus, and the host's
fetch proxy (the allow-list and its log).

The research VM has no network: a run over the web asks the host, whose fetch proxy
fetches only from allowed hosts. The proxy serves a run while this command follows it
(or while ``somnus serve`` runs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Column, Table

from cli.common import Clock, JsonFlag, emit_json, err, finish_run, host, out
from core.errors import InvalidInput
from guest_agent.protocol.research import (
    ResearchEvent,
    ResearchEventKind,
    ResearchMode,
    ResearchRunView,
    ResearchStatus,
    RoleSlot,
    SourceScope,
)
from orchestrator.research.export import SUFFIX, ReportFormat, render
from orchestrator.research.service import ResearchService

research_app = typer.Typer(
    help="Research: cited reports from your corpus and allowed web hosts, made in the "
         "research VM.\n\n"
         "Set up once: 'somnus vm create research --subsystem research'. Then, for example:\n\n"
         "  somnus research corpus add ~/papers\n\n"
         "  somnus research start \"How do LSM trees compact?\"\n\n"
         "  somnus research allow en.wikipedia.org --crawl\n\n"
         "  somnus research start \"Rust vs Go for CLIs\" --mode compare --sources both\n\n"
         "  somnus research report r-1a2b3c4d --format html -o report.html",
    no_args_is_help=True)
corpus_app = typer.Typer(help="The documents research reads and quotes (kept in the "
                              "research VM).", no_args_is_help=True)
research_app.add_typer(corpus_app, name="corpus")

RunArg = Annotated[str, typer.Argument(help="Run id (see 'somnus research list').")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
FORMATS = {"md": ReportFormat.MARKDOWN, "markdown": ReportFormat.MARKDOWN,
           "html": ReportFormat.HTML, "json": ReportFormat.JSON}


def research() -> ResearchService:
    return host().research


def parse_roles(specs: list[str]) -> dict[RoleSlot, str]:
    """``--role analyst=Skeptic`` … as the request's roles."""
    roles: dict[RoleSlot, str] = {}
    slots = ", ".join(s.value for s in RoleSlot)
    for spec in specs:
        slot, sep, role = spec.partition("=")
        try:
            roles[RoleSlot(slot.strip())] = role.strip()
        except ValueError:
            raise InvalidInput(f"--role {spec!r}: use SLOT=ROLE, SLOT one of {slots}") from None
        if not sep or not role.strip():
            raise InvalidInput(f"--role {spec!r}: use SLOT=ROLE, SLOT one of {slots}")
    return roles


def parse_format(text: str | None, output: Path | None) -> ReportFormat:
    """``md``, ``markdown``, ``html`` or ``json``; without one, the output file's suffix
    decides (Markdown by default)."""
    if text is None:
        suffix = output.suffix.lower() if output else ""
        return {".html": ReportFormat.HTML, ".htm": ReportFormat.HTML,
                ".json": ReportFormat.JSON}.get(suffix, ReportFormat.MARKDOWN)
    try:
        return FORMATS[text.lower()]
    except KeyError:
        raise InvalidInput(f"--format {text!r}: use md, html or json") from None


# -- following a run -----------------------------------------------------------------------


class Follower:
    """Prints a run's progress on stderr: stages, queries, sources read, tokens."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.tokens = 0
        self.sources = 0

    def __call__(self, event: ResearchEvent) -> None:
        line = self.describe(event)
        if line is not None:
            self.clock(line)

    def describe(self, event: ResearchEvent) -> str | None:
        data, message = event.data, escape(event.message)
        match event.kind:
            case ResearchEventKind.STAGE:
                where = f" (round {data['round']})" if data.get("round") else ""
                return f"[bold]{event.stage or 'stage'}[/]{where}" + (
                    f": {message}" if message else "")
            case ResearchEventKind.QUERY:
                return f"  query: {message}"
            case ResearchEventKind.SOURCE:
                self.sources += 1
                return f"  read [{self.sources}]: {message}"
            case ResearchEventKind.MODEL_CALL:
                self.tokens += _int(data.get("prompt_tokens")) + _int(
                    data.get("completion_tokens"))
                return None  # summed up at each stage's end
            case ResearchEventKind.STAGE_DONE:
                return (f"  [dim]{event.stage or 'stage'} done · {self.tokens:,} tokens · "
                        f"{self.sources} sources[/]")
            case ResearchEventKind.BUDGET:
                reason = escape(str(data.get("reason", "")))
                return f"[yellow]budget reached[/]: {reason} {message}".rstrip()
            case ResearchEventKind.WAITING:
                return f"[yellow]waiting[/]: {message or 'for the host fetch proxy'}"
            case ResearchEventKind.STATUS:
                return f"status: {data.get('status', message)}"
            case _:
                return f"  [dim]{event.kind.value}: {message}[/]" if message else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def follow_run(svc: ResearchService, run_id: str, after: int, quiet: bool) -> ResearchRunView:
    """Follow a run to its end (progress on stderr unless ``quiet``); its final view.
    Ctrl-C stops following, not the run."""
    show = None if quiet else Follower()
    events: Iterator[ResearchEvent] = svc.follow(run_id, after,
                                                 None if quiet else Clock())
    try:
        for event in events:
            if show is not None:
                show(event)
    except KeyboardInterrupt:
        err.print(f"stopped following; the run goes on in the research VM: "
                  f"'somnus research status {run_id} --follow'")
        raise typer.Exit(130) from None
    return svc.status(run_id)


def print_outcome(view: ResearchRunView) -> None:
    """The end of a followed run: how it ended, the summary, where the report is."""
    run = view.run_id
    if view.status is ResearchStatus.COMPLETED:
        report = research().report(run)
        out.print(f"[bold]{escape(report.title)}[/]")
        out.print(escape(report.summary), highlight=False)
        err.print(f"{len(report.sources)} sources · {view.usage.tokens:,} tokens · stopped: "
                  f"{report.stop_reason.value}. The report: 'somnus research show {run}', or "
                  f"'somnus research report {run} --format html -o {run}.html'")
    else:
        why = f": {view.error}" if view.error else ""
        err.print(f"research run {run} is {view.status.value}{escape(why)}", highlight=False)
        if view.status in (ResearchStatus.ERROR, ResearchStatus.CANCELLED):
            err.print(f"'somnus research resume {run}' goes on from the stage it reached")


def _finish(view: ResearchRunView, as_json: bool) -> None:
    finish_run(view, as_json, print_outcome, failed=view.status is ResearchStatus.ERROR)


# -- runs ----------------------------------------------------------------------------------


@research_app.command("start")
def research_start(
    question: Annotated[str, typer.Argument(help="What to research (a claim, for fact-check).")],
    mode: Annotated[ResearchMode, typer.Option(
        help="quick: one pass; standard: rounds and an outline; deep: recursive follow-ups; "
             "fact-check: a verdict on a claim; compare: subjects side by side.")]
    = ResearchMode.STANDARD,
    depth: Annotated[int | None, typer.Option(min=1, max=5,
                                              help="Rounds of follow-up questions.")] = None,
    breadth: Annotated[int | None, typer.Option(min=1, max=8, help="Queries per round.")]
    = None,
    sources: Annotated[SourceScope, typer.Option(
        help="corpus: your documents; web: allowed hosts; both.")] = SourceScope.CORPUS,
    max_sources: Annotated[int | None, typer.Option(min=1, max=50,
                                                    help="Sources read at most.")] = None,
    budget_tokens: Annotated[int | None, typer.Option(
        min=0, help="Prompt + completion tokens, all model calls.")] = None,
    budget_minutes: Annotated[int | None, typer.Option(min=1, max=1440,
                                                       help="Wall time.")] = None,
    max_calls: Annotated[int | None, typer.Option(min=0, max=1000,
                                                  help="Model calls at most.")] = None,
    subject: Annotated[list[str] | None, typer.Option(
        "--subject", help="A subject to compare (repeat; default: read from 'A vs B').")]
    = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="Recast a part: SLOT=ROLE, SLOT one of planner, investigator, analyst, "
                       "synthesizer, fact_checker (repeat).")] = None,
    detach: Annotated[bool, typer.Option(
        help="Start it and return (follow later: 'somnus research status RUN --follow').")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a research run and follow it to its report (progress on stderr).

    Examples:

      somnus research start "What limits SQLite write throughput?" --mode quick

      somnus research start "Coffee raises blood pressure" --mode fact-check --sources web

      somnus research start "PostgreSQL vs MySQL" --mode compare --sources both --depth 3
    """
    svc = research()
    view = svc.start(question, mode, depth=depth, breadth=breadth, sources=sources,
                     max_sources=max_sources, budget_tokens=budget_tokens,
                     budget_minutes=budget_minutes, max_model_calls=max_calls,
                     subjects=subject or None, roles=parse_roles(role or []) or None,
                     progress=None if as_json else Clock())
    if detach:
        if as_json:
            emit_json(view)
        else:
            out.print(f"research run {view.run_id} started: 'somnus research status "
                      f"{view.run_id} --follow'")
        return
    if not as_json:
        err.print(f"research run {view.run_id} started ({view.request.mode.value}, "
                  f"{view.request.sources.value}); Ctrl-C stops following, not the run")
    _finish(follow_run(svc, view.run_id, 0, quiet=as_json), as_json)


@research_app.command("list")
def research_list(as_json: JsonFlag = False) -> None:
    """List research runs, newest first."""
    views = research().runs()
    if as_json:
        emit_json({"runs": [v.model_dump(mode="json") for v in views]})
        return
    table = Table(Column("RUN", no_wrap=True), "STATUS", "STAGE", "MODE", "SOURCES", "TOKENS",
                  "UPDATED", "QUESTION")
    for v in views:
        question = v.request.question
        table.add_row(v.run_id, v.status.value, v.stage.value if v.stage else "",
                      v.request.mode.value, str(v.usage.sources_read), f"{v.usage.tokens:,}",
                      _when(v.updated_at),
                      escape(question if len(question) <= 60 else question[:57] + "..."))
    out.print(table if views else "no research runs yet: 'somnus research start \"QUESTION\"'")


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).astimezone().strftime("%Y-%m-%d %H:%M")


@research_app.command("status")
def research_status(
    run: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Follow it to its end (serving its web "
                                              "requests meanwhile).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """A run's status, stage, usage and stop reason."""
    svc = research()
    view = svc.status(run)
    if follow:
        if not as_json:
            _print_view(view)
        _finish(follow_run(svc, run, view.last_event, quiet=as_json), as_json)
        return
    if as_json:
        emit_json(view)
    else:
        _print_view(view)


def _print_view(v: ResearchRunView) -> None:
    u = v.usage
    stage = f", {v.stage.value}" + (f" (round {v.round})" if v.round else "") if v.stage else ""
    out.print(f"[bold]{v.run_id}[/] {v.status.value}{stage}: {escape(v.request.question)}")
    out.print(f"  {v.request.mode.value}, {v.request.sources.value}; depth "
              f"{v.request.depth}, breadth {v.request.breadth}")
    out.print(f"  {u.model_calls} model calls, {u.tokens:,} tokens, {u.queries} queries, "
              f"{u.sources_read} sources read, {u.elapsed_s:.0f} s")
    if v.stages_done:
        out.print(f"  done: {', '.join(v.stages_done)}")
    if v.stop_reason:
        out.print(f"  stopped: {v.stop_reason.value}")
    if v.error:
        out.print(f"  [red]error[/]: {escape(v.error)}")


@research_app.command("show")
def research_show(run: RunArg) -> None:
    """Show a finished run's report in the terminal."""
    out.print(Markdown(render(research().report(run), ReportFormat.MARKDOWN)))


@research_app.command("report")
def research_report(
    run: RunArg,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="md, html (one self-contained page) or json (default: from "
                         "--output's suffix, else md).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Write it here instead of stdout.")]
    = None,
) -> None:
    """Export a finished run's report: claims with numbered citations, then the sources
    with the passages quoted from them.

    Example: somnus research report r-1a2b3c4d --format html -o report.html
    """
    chosen = parse_format(fmt, output)
    text = render(research().report(run), chosen)
    if output is None:
        sys.stdout.write(text)  # as is: no markup, wrapping or emoji codes of the console
        sys.stdout.flush()
        return
    if output.is_dir():
        output = output / f"{run}{SUFFIX[chosen]}"
    output.write_text(text)
    err.print(f"report of {run} written to {output}")


@research_app.command("cancel")
def research_cancel(run: RunArg, yes: YesFlag = False, as_json: JsonFlag = False) -> None:
    """Stop a run at its next step ('resume' goes on from the stage it reached)."""
    if not yes:
        typer.confirm(f"Cancel research run '{run}'?", abort=True, err=True)
    view = research().cancel(run, None if as_json else Clock())
    if as_json:
        emit_json(view)
    else:
        out.print(f"research run {run} is {view.status.value}")


@research_app.command("resume")
def research_resume(
    run: RunArg,
    detach: Annotated[bool, typer.Option(help="Resume it and return.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Go on with a stopped (cancelled, failed, interrupted) run from the stage it had
    reached, and follow it."""
    svc = research()
    view = svc.resume(run, None if as_json else Clock())
    if detach:
        if as_json:
            emit_json(view)
        else:
            out.print(f"research run {run} is {view.status.value}")
        return
    _finish(follow_run(svc, run, view.last_event, quiet=as_json), as_json)


# -- the corpus ----------------------------------------------------------------------------


@corpus_app.command("add")
def corpus_add(
    source: Annotated[str, typer.Argument(
        help="A file, a folder (its .html .htm .md .markdown .txt .rst .pdf files, "
             "recursively) or an http(s) URL on an allowed host.")],
    as_json: JsonFlag = False,
) -> None:
    """Add documents to the research corpus (the VM extracts their text and indexes it).

    Examples: somnus research corpus add ~/papers ;
    somnus research corpus add https://example.org/spec.html
    """
    docs = research().corpus_add(source, None if as_json else Clock())
    if as_json:
        emit_json({"documents": [d.model_dump(mode="json") for d in docs]})
        return
    for d in docs:
        again = " (replaced)" if d.replaced else ""
        out.print(f"{d.doc_id}  {escape(d.title)}  {d.chars:,} chars{again}", highlight=False)
    err.print(f"{len(docs)} document{'s' if len(docs) != 1 else ''} added")


@corpus_app.command("list")
def corpus_list(as_json: JsonFlag = False) -> None:
    """The documents in the corpus."""
    listing = research().corpus_list(None if as_json else Clock())
    if as_json:
        emit_json(listing)
        return
    table = Table("DOC", "TITLE", "FORMAT", "KIND", "CHARS", "REF")
    for d in listing.documents:
        table.add_row(d.doc_id, escape(d.title), d.format.value, d.kind.value, f"{d.chars:,}",
                      escape(d.ref))
    out.print(table if listing.documents
              else "the corpus is empty: 'somnus research corpus add PATH|URL'")


@corpus_app.command("remove")
def corpus_remove(
    doc_id: Annotated[str, typer.Argument(help="Document id (see 'corpus list').")],
    yes: YesFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Take a document out of the corpus."""
    if not yes:
        typer.confirm(f"Remove document '{doc_id}' from the research corpus?", abort=True,
                      err=True)
    doc = research().corpus_remove(doc_id, None if as_json else Clock())
    if as_json:
        emit_json(doc)
    else:
        out.print(f"removed {doc.doc_id} ({escape(doc.ref)})")


# -- the fetch proxy -----------------------------------------------------------------------


@research_app.command("allow")
def research_allow(
    target: Annotated[str, typer.Argument(
        metavar="HOST", help="example.org, 127.0.0.1:8765, or a URL (its host is allowed; "
                             "a URL is where --crawl starts).")],
    crawl: Annotated[bool, typer.Option(
        help="Also crawl it (same host, robots.txt honoured) so web search finds its pages "
             "without a search engine.")] = False,
    max_pages: Annotated[int, typer.Option(min=1, max=10000, help="Pages to crawl at most.")]
    = 200,
    as_json: JsonFlag = False,
) -> None:
    """Let research fetch from a host (ports 80 and 443 unless a port is named; not its
    subdomains).

    Examples: somnus research allow en.wikipedia.org ;
    somnus research allow https://docs.python.org/3/ --crawl --max-pages 500
    """
    svc = research()
    allowed = svc.allow(target)
    indexed = None
    if crawl:
        started = time.monotonic()
        progress = None if as_json else Clock()
        indexed = svc.crawl(target if "://" in target else allowed.host, max_pages, progress)
        if not as_json:
            err.print(f"crawled {indexed} pages of {allowed.host} in "
                      f"{time.monotonic() - started:.0f} s")
    if as_json:
        emit_json({**allowed.model_dump(mode="json"), "crawled": indexed})
    else:
        out.print(f"research may fetch from {allowed.host}")


@research_app.command("disallow")
def research_disallow(
    target: Annotated[str, typer.Argument(metavar="HOST", help="A host on the allow-list.")],
    as_json: JsonFlag = False,
) -> None:
    """Take a host off the allow-list (its crawled pages stay in the index, unused)."""
    key = research().disallow(target)
    if as_json:
        emit_json({"host": key})
    else:
        out.print(f"research may no longer fetch from {key}")


@research_app.command("allowed")
def research_allowed(as_json: JsonFlag = False) -> None:
    """The hosts research may fetch from."""
    rows = research().allowed()
    if as_json:
        emit_json([r.model_dump(mode="json") for r in rows])
        return
    for r in rows:
        out.print(r.host, highlight=False)
    if not rows:
        err.print("no host is allowed: 'somnus research allow HOST'")


@research_app.command("log")
def research_log(
    limit: Annotated[int, typer.Option(min=1, max=5000, help="At most this many.")] = 50,
    run: Annotated[str | None, typer.Option(help="Only this run's requests.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The fetch proxy's requests, newest first, refused ones too."""
    entries = research().fetch_log(limit, run)
    if as_json:
        emit_json([e.model_dump(mode="json") for e in entries])
        return
    table = Table("AT", "KIND", "RUN", "OK", "STATUS", "BYTES", "TARGET", "NOTE")
    for e in entries:
        ok = "cached" if e.cached else ("yes" if e.allowed else "[red]refused[/]")
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.kind.value, e.run_id or "", ok,
                      "" if e.status is None else str(e.status), f"{e.bytes:,}",
                      escape(e.target[:80]), escape(e.reason or ""))
    out.print(table if entries else "the fetch proxy has made no request yet")
