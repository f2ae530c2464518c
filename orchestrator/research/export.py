"""A research report as Markdown, a self-contained HTML page, or JSON.

Each claim is followed by its citation marks (``[n]``); the sources follow, each with
the passages quoted from it, so every mark can be checked against what the source says.
The HTML needs nothing beside itself (inline CSS, no scripts, no external assets) and
escapes every text it shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from jinja2 import Environment, select_autoescape

from guest_agent.protocol.research import ResearchMode, ResearchReport, Source, SourceKind


class ReportFormat(StrEnum):
    MARKDOWN = "markdown"
    HTML = "html"
    JSON = "json"


SUFFIX = {ReportFormat.MARKDOWN: ".md", ReportFormat.HTML: ".html", ReportFormat.JSON: ".json"}
MEDIA_TYPE = {ReportFormat.MARKDOWN: "text/markdown", ReportFormat.HTML: "text/html",
              ReportFormat.JSON: "application/json"}


def render(report: ResearchReport, fmt: ReportFormat) -> str:
    if fmt is ReportFormat.JSON:
        return report.model_dump_json(indent=2) + "\n"
    if fmt is ReportFormat.HTML:
        return _html(report)
    return _markdown(report)


def sources_with_quotes(report: ResearchReport) -> list[tuple[Source, list[str]]]:
    """Every source in number order, with the distinct passages the claims quote from it.
    A number a claim cites but the report does not list gets a stand-in entry, so no
    citation mark is left without its source."""
    by_n = {s.n: s for s in report.sources}
    quotes: dict[int, list[str]] = {n: [] for n in by_n}
    for section in report.sections:
        for claim in section.claims:
            for citation in claim.citations:
                if citation.n not in by_n:
                    by_n[citation.n] = Source(n=citation.n, kind=SourceKind.CORPUS, ref="",
                                              title="(source not listed in the report)",
                                              doc_id="")
                    quotes[citation.n] = []
                quote = citation.quote.strip()
                if quote and quote not in quotes[citation.n]:
                    quotes[citation.n].append(quote)
    return [(by_n[n], quotes[n]) for n in sorted(by_n)]


def marks(numbers: list[int]) -> str:
    return "".join(f"[{n}]" for n in dict.fromkeys(numbers))


def usage_line(report: ResearchReport) -> str:
    u = report.usage
    return (f"Stopped: {report.stop_reason.value} · {u.model_calls} model calls · "
            f"{u.tokens:,} tokens · {u.queries} queries · {u.sources_read} sources read · "
            f"{u.elapsed_s:.1f} s")


def _created(report: ResearchReport) -> str:
    return datetime.fromtimestamp(report.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _markdown(report: ResearchReport) -> str:
    lines = [f"# {report.title}", "", f"**Question:** {report.question}", ""]
    if report.mode is ResearchMode.FACT_CHECK and report.verdict is not None:
        lines += [f"**Verdict:** {report.verdict.value}", ""]
    if report.subjects:
        lines += [f"**Compared:** {', '.join(report.subjects)}", ""]
    if report.summary:
        lines += [report.summary, ""]
    for section in report.sections:
        lines += [f"## {section.heading}", ""]
        for claim in section.claims:
            text = " ".join(claim.text.split())
            lines.append(f"- {text} {marks([c.n for c in claim.citations])}")
        lines.append("")
    lines += ["## Sources", ""]
    for source, quotes in sources_with_quotes(report):
        ref = f" — {source.ref}" if source.ref else ""
        lines += [f"[{source.n}] {source.title}{ref}", ""]
        for quote in quotes:
            lines += ["\n".join("> " + line for line in quote.splitlines()), ""]
    lines += ["---", "", usage_line(report) + "  ",
              f"Run {report.run_id} ({report.mode.value}), {_created(report)}"]
    if report.reused_runs:
        lines[-1] += "  \nBuilds on the findings of " + ", ".join(report.reused_runs)
    return "\n".join(lines) + "\n"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ r.title }}</title>
<style>
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; }
.verdict { display: inline-block; padding: .1rem .5rem; border-radius: .3rem;
           background: #eef; font-weight: 600; }
ul.claims li { margin: .4rem 0; }
a.cite { text-decoration: none; font-size: .85em; vertical-align: super; }
ol.sources { padding-left: 0; list-style: none; }
ol.sources li { margin: 1rem 0; }
ol.sources li:target { background: #fffbe6; }
blockquote { margin: .4rem 0 .4rem 1rem; padding-left: .8rem; border-left: 3px solid #ccc;
             color: #333; white-space: pre-wrap; }
footer { margin-top: 2rem; color: #666; font-size: .9em; border-top: 1px solid #ddd; }
</style>
</head>
<body>
<h1>{{ r.title }}</h1>
<p class="meta"><strong>Question:</strong> {{ r.question }}</p>
{% if verdict %}<p><span class="verdict">Verdict: {{ verdict }}</span></p>{% endif %}
{% if r.subjects %}<p class="meta"><strong>Compared:</strong> {{ r.subjects | join(", ") }}</p>
{% endif %}
{% if r.summary %}<p>{{ r.summary }}</p>{% endif %}
{% for section in r.sections %}
<h2>{{ section.heading }}</h2>
<ul class="claims">
{% for claim in section.claims %}  <li>{{ claim.text }}{% for n in cited(claim) %} <a class="cite" href="#src-{{ n }}">[{{ n }}]</a>{% endfor %}</li>
{% endfor %}</ul>
{% endfor %}
<h2>Sources</h2>
<ol class="sources">
{% for source, quotes in sources %}<li id="src-{{ source.n }}"><strong>[{{ source.n }}]</strong> {{ source.title }}{% if source.ref %} — {% if linkable(source.ref) %}<a href="{{ source.ref }}">{{ source.ref }}</a>{% else %}{{ source.ref }}{% endif %}{% endif %}
{% for quote in quotes %}<blockquote>{{ quote }}</blockquote>
{% endfor %}</li>
{% endfor %}</ol>
<footer><p>{{ usage }}<br>Run {{ r.run_id }} ({{ r.mode.value }}), {{ created }}{% if r.reused_runs %}<br>Builds on the findings of {{ r.reused_runs | join(", ") }}{% endif %}</p></footer>
</body>
</html>
"""  # noqa: E501
_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True),
                   trim_blocks=False, lstrip_blocks=False)
_TEMPLATE = _ENV.from_string(_PAGE)


def _html(report: ResearchReport) -> str:
    verdict = (report.verdict.value
               if report.mode is ResearchMode.FACT_CHECK and report.verdict else None)
    return _TEMPLATE.render(
        r=report, verdict=verdict, sources=sources_with_quotes(report), usage=usage_line(report),
        created=_created(report),
        cited=lambda claim: list(dict.fromkeys(c.n for c in claim.citations)),
        linkable=lambda ref: ref.startswith(("http://", "https://")))
