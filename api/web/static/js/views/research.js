// Research view: start a run in the research VM (question, mode, depth, breadth, sources),
// follow its stages live, and read its report, where every [n] citation opens the exact
// passage it rests on. Beside it: earlier runs, the corpus and the fetch allow-list.

import { get, post, del } from "../api.js";
import { el, fill, confirmAction, notify, attempt, when } from "../ui.js";

const MODES = ["quick", "standard", "deep", "fact-check", "compare"]; // protocol ResearchMode
const SCOPES = ["corpus", "web", "both"]; // SourceScope
const STAGES = ["brief", "queries", "search", "fetch", "extract", "notes", "outline", "report"];
const FINISHED = new Set(["completed", "error", "cancelled"]);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const unix = (t) => when(new Date(t * 1000).toISOString());
const linkable = (ref) => /^https?:\/\//i.test(ref);
const runPath = (id) => `/research/runs/${encodeURIComponent(id)}`;

function select(id, values, chosen) {
  return el(`select#${id}`, { name: id }, values.map((v) =>
    el("option", { value: String(v), selected: v === chosen }, String(v))));
}
const field = (id, text, control) => el("div.field", {}, el("label", { for: id }, text), control);

export default {
  id: "research",
  title: "Research",
  subsystem: "research",
  mount(root, shell) {
    let stop = () => {};      // closes the open run's event stream
    let retry = null;          // timer of a reconnection
    let run = null;            // the open run's live state
    let current = "";

    const question = el("textarea#research-question", { name: "question", rows: 3, required: true,
      minLength: 3, maxLength: 2000, placeholder: "What should be researched?" });
    const mode = select("research-mode", MODES, "standard");
    const depth = select("research-depth", range(1, 5), 2);
    const breadth = select("research-breadth", range(1, 8), 4);
    const sources = select("research-sources", SCOPES, "corpus");
    // Hard budgets (enforced in code by the research VM); empty means the server's default.
    const number = (id, min, max) => el(`input#${id}`, { type: "number", min, max, inputMode: "numeric", placeholder: "default" });
    const budgets = {
      max_sources: number("research-max-sources", 1, 50),
      max_model_calls: number("research-max-calls", 0, 1000),
      budget_tokens: number("research-budget-tokens", 0, 10000000),
      budget_minutes: number("research-budget-minutes", 1, 1440),
    };
    const startButton = el("button.primary#research-start", { type: "submit" }, "Start research");
    const form = el("form.v-form", { onsubmit: (e) => { e.preventDefault(); start(); } },
      field("research-question", "Question", question),
      el("div.v-row", {}, field("research-mode", "Mode", mode), field("research-depth", "Depth", depth),
        field("research-breadth", "Breadth", breadth), field("research-sources", "Sources", sources)),
      el("details#research-budgets", {}, el("summary", {}, "Budgets"),
        el("div.v-row", {},
          field("research-max-sources", "Max sources", budgets.max_sources),
          field("research-max-calls", "Model calls", budgets.max_model_calls),
          field("research-budget-tokens", "Tokens", budgets.budget_tokens),
          field("research-budget-minutes", "Minutes", budgets.budget_minutes))),
      startButton);
    const runBox = el("section.v-panel#research-run", { "aria-label": "Research run" });
    const runList = el("ul.v-list#research-runs");
    const allowList = el("ul.v-list#research-allowed");
    const corpusList = el("ul.v-list#research-corpus-list");
    const corpus = el("details#research-corpus", {},
      el("summary", {}, "Corpus"), el("p.hint", {}, "Opening this brings up the research VM."),
      corpusList, addForm("corpus-source", "File, folder or URL to add", "/path or https://…", "Add", addDocument));

    fill(root, el("div.v-columns", {},
      el("div.v-main", {}, el("h1", {}, "Research"), form, runBox),
      el("aside.v-side", { "aria-label": "Earlier runs and sources" },
        el("h2", {}, "Earlier runs"), runList, corpus,
        el("h2", {}, "Allowed hosts"), allowList,
        addForm("allow-host", "Host to allow", "example.org", "Allow", allowHost))));
    corpus.addEventListener("toggle", () => { if (corpus.open) loadCorpus(); });

    function addForm(id, label, placeholder, action, fn) {
      const input = el(`input#${id}`, { name: id, required: true, autocomplete: "off", placeholder });
      return el("form.v-inline", { onsubmit: async (e) => {
        e.preventDefault();
        if (await fn(input.value.trim())) input.value = "";
      } }, el("label", { for: id }, label), input, el(`button#${id}-submit`, { type: "submit" }, action));
    }

    async function start() {
      startButton.disabled = true;
      const body = { question: question.value.trim(), mode: mode.value, depth: Number(depth.value),
        breadth: Number(breadth.value), sources: sources.value };
      for (const [key, input] of Object.entries(budgets)) if (input.value !== "") body[key] = Number(input.value);
      const view = await attempt(() => post("/research/runs", body));
      startButton.disabled = false;
      if (!view) return;
      notify(`Research run ${view.run_id} started`);
      loadRuns();
      location.hash = `#/research/${view.run_id}`;
    }

    async function openRun(id) {
      stop(); clearTimeout(retry); current = id; run = null;
      for (const a of runList.querySelectorAll("a")) a.toggleAttribute("aria-current", a.dataset.id === id);
      if (!id) return fill(runBox, el("p.hint", {}, "Start a run, or open an earlier one."));
      fill(runBox, el("p.hint", {}, "Loading…"));
      const view = await attempt(() => get(runPath(id)));
      if (current !== id) return;
      if (!view) return fill(runBox, el("p.hint", {}, `Run ${id} could not be loaded.`));
      showRun(view);
    }

    function showRun(view) {
      const r = view.request;
      run = { id: view.run_id, status: view.status, stage: view.stage, round: view.round,
        done: new Set(view.stages_done.map((s) => s.replace(/-\d+$/, ""))), seq: view.last_event,
        usage: { ...view.usage, tokens: view.usage.prompt_tokens + view.usage.completion_tokens },
        failures: 0, stopReason: view.stop_reason, error: view.error };
      run.stageList = el("ol.v-stages#research-stages", { "aria-label": "Stages" },
        STAGES.map((s) => el("li", { dataset: { stage: s } }, s, el("span.v-sr", {}, ""))));
      run.counters = el("dl.v-counters#research-counters", { "aria-live": "polite" });
      run.statusLine = el("p#research-status");
      run.progress = el("p#research-progress", { "aria-live": "polite" }, "—");
      run.cancel = el("button#research-cancel", { type: "button", onclick: () => act("cancel") }, "Cancel");
      run.resume = el("button#research-resume", { type: "button", onclick: () => act("resume") }, "Resume");
      run.report = el("div#research-report");
      fill(runBox, el("h2", {}, r.question),
        el("p.meta", {}, `${r.mode} · depth ${r.depth} · breadth ${r.breadth} · ${r.sources} · started ${unix(view.created_at)}`),
        run.statusLine, run.stageList, run.counters, run.progress,
        el("div.v-actions", {}, run.cancel, run.resume), run.report);
      render();
      if (FINISHED.has(view.status)) loadReport();
      else stop = follow(view.run_id);
    }

    function render() {
      const finished = FINISHED.has(run.status);
      for (const li of run.stageList.children) {
        const s = li.dataset.stage;
        const now = !finished && run.stage === s;
        const done = !now && (run.status === "completed" || run.done.has(s));
        li.classList.toggle("done", done);
        li.classList.toggle("current", now);
        if (now) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
        li.lastChild.textContent = done ? " (done)" : "";
      }
      const u = run.usage;
      fill(run.counters, [["Round", run.round], ["Queries", u.queries], ["Sources read", u.sources_read],
        ["Tokens", u.tokens.toLocaleString()], ["Model calls", u.model_calls]]
        .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v)))));
      run.statusLine.textContent = `Status: ${run.status}` + (run.stopReason ? ` (stopped: ${run.stopReason})` : "")
        + (run.error ? ` — ${run.error}` : "");
      run.cancel.disabled = finished;
      run.resume.disabled = !finished || run.status === "completed";
    }

    function onEvent(ev) {
      if (ev.seq <= run.seq) return; // a reconnection may send events again
      run.seq = ev.seq; run.failures = 0;
      const d = ev.data || {};
      if (ev.kind === "stage") { run.stage = ev.stage; if (d.round) run.round = d.round; }
      else if (ev.kind === "stage_done" && ev.stage) run.done.add(ev.stage);
      else if (ev.kind === "query") run.usage.queries += 1;
      else if (ev.kind === "source") run.usage.sources_read += 1;
      else if (ev.kind === "model_call") {
        run.usage.model_calls += 1;
        run.usage.tokens += (Number(d.prompt_tokens) || 0) + (Number(d.completion_tokens) || 0);
      } else if (ev.kind === "status" && d.status) run.status = d.status;
      else if (ev.kind === "budget" && d.reason) run.stopReason = d.reason;
      run.progress.textContent = `${ev.stage ? `${ev.stage} · ` : ""}${ev.kind}${ev.message ? `: ${ev.message}` : ""}`;
      render();
    }

    // EventSource directly (not api.subscribe): the server's in-band `error` event shares
    // its name with the browser's connection error, which carries no data; and on a drop
    // we follow on from the last seq seen rather than the URL's stale `after`.
    function follow(id) {
      const url = `${runPath(id)}/events?after=${run.seq}`;
      const source = new EventSource(url);
      const close = () => source.close();
      source.onmessage = (e) => {
        if (e.data === "[DONE]") { close(); run.failures += 1; refresh(id); return; }
        onEvent(JSON.parse(e.data));
      };
      source.addEventListener("error", async (e) => {
        const refused = source.readyState === EventSource.CLOSED; // an error answer, not a drop
        close();
        if (e.data) {
          const body = JSON.parse(e.data);
          notify(`${body.error}: ${body.detail}`, { error: true });
        } else if (refused) notify(await refusal(url), { error: true });
        else if (++run.failures <= 3) retry = setTimeout(() => refresh(id), 3000);
        else notify(`Lost the event stream of run ${id}`, { error: true });
      });
      return close;
    }

    // EventSource does not say why a stream was refused: ask once with fetch for the reason.
    async function refusal(url) {
      const ctrl = new AbortController();
      try {
        const r = await fetch(url, { signal: ctrl.signal, headers: { Accept: "text/event-stream" } });
        const body = r.ok ? {} : await r.json().catch(() => ({}));
        return body.error ? `${body.error}: ${body.detail}` : `The run's event stream failed (${r.status})`;
      } catch { return "The run's event stream failed"; } finally { ctrl.abort(); }
    }

    // Re-read the run after its stream ended or dropped: show the report, or follow on.
    async function refresh(id) {
      const view = await attempt(() => get(runPath(id)));
      if (!view || current !== id || !run) return;
      Object.assign(run, { status: view.status, stage: view.stage, round: view.round,
        stopReason: view.stop_reason, error: view.error });
      render();
      if (FINISHED.has(view.status)) { loadReport(); loadRuns(); }
      else if (run.failures <= 3) stop = follow(id);
    }

    async function act(what) {
      const id = run.id;
      if (what === "cancel" && !await confirmAction(`Stop run ${id}? It writes its report from what it has.`,
        { action: "Stop run" })) return;
      const view = await attempt(() => post(`${runPath(id)}/${what}`));
      if (view && current === id) { stop(); showRun(view); loadRuns(); }
    }

    async function loadReport() {
      const { id, status } = run;
      let report;
      try { report = await get(`${runPath(id)}/report`); } catch (e) {
        if (status === "completed") notify(e.message, { error: true });
        return fill(run.report, el("p.hint", {}, "No report for this run."));
      }
      if (current === id) fill(run.report, reportView(report));
    }

    function reportView(report) {
      const byN = new Map(report.sources.map((s) => [s.n, s]));
      const quotes = new Map(); // n -> the distinct passages claims quote from it
      for (const sec of report.sections) for (const c of sec.claims) for (const q of c.citations) {
        const list = quotes.get(q.n) || []; quotes.set(q.n, list);
        if (q.quote.trim() && !list.includes(q.quote.trim())) list.push(q.quote.trim());
      }
      let panels = 0;
      const passage = (n, shown) => {
        const s = byN.get(n);
        return el("figure.v-passage", {},
          shown.length ? shown.map((q) => el("blockquote", {}, q)) : el("p.hint", {}, "No passage quoted."),
          el("figcaption", {}, `[${n}] ${s ? s.title : "(source not listed in the report)"}`,
            s && s.ref ? [" — ", linkable(s.ref)
              ? el("a", { href: s.ref, target: "_blank", rel: "noopener noreferrer" }, s.ref)
              : el("code", {}, s.ref)] : null));
      };
      // A text with its citation marks: each [n] a button opening its passage(s) below it.
      const cited = (tag, text, citations) => {
        const panel = el("div.v-citation", { id: `research-cite-${++panels}`, hidden: true });
        const mark = (n, shown) => el("button.cite", { type: "button", "aria-expanded": "false",
          "aria-controls": panel.id, dataset: { n: String(n) }, title: `Source ${n}`, onclick: (e) => {
            const open = e.currentTarget.getAttribute("aria-expanded") === "true";
            for (const b of node.querySelectorAll("button.cite")) b.setAttribute("aria-expanded", "false");
            panel.hidden = open;
            if (!open) { e.currentTarget.setAttribute("aria-expanded", "true"); fill(panel, passage(n, shown)); }
          } }, `[${n}]`);
        const parts = text.split(/\[(\d+)\]/).map((p, i) =>
          i % 2 && (byN.has(Number(p)) || quotes.has(Number(p))) ? mark(Number(p), quotes.get(Number(p)) || []) : p);
        const own = new Map(); // the claim's own citations, unless its text has the mark
        for (const c of citations) if (!text.includes(`[${c.n}]`)) own.set(c.n, [...(own.get(c.n) || []), c.quote]);
        const node = el(tag, {}, parts, [...own].flatMap(([n, qs]) => [" ", mark(n, qs)]), panel);
        return node;
      };
      const u = report.usage;
      return el("article.v-report", {},
        el("h2", {}, report.title),
        report.verdict ? el("p.v-verdict", {}, `Verdict: ${report.verdict}`) : null,
        report.subjects.length ? el("p.meta", {}, `Compared: ${report.subjects.join(", ")}`) : null,
        report.summary ? cited("p", report.summary, []) : null,
        report.sections.flatMap((sec) => [el("h3", {}, sec.heading),
          el("ul.v-claims", {}, sec.claims.map((c) => cited("li", c.text, c.citations)))]),
        el("h3", {}, "Sources"),
        el("ol.v-sources", {}, [...new Set([...byN.keys(), ...quotes.keys()])].sort((a, b) => a - b)
          .map((n) => el("li", { id: `research-source-${n}` }, passage(n, quotes.get(n) || [])))),
        el("p.meta", {}, `Stopped: ${report.stop_reason} · ${u.model_calls} model calls · `
          + `${(u.prompt_tokens + u.completion_tokens).toLocaleString()} tokens · ${u.queries} queries · `
          + `${u.sources_read} sources read · ${u.elapsed_s.toFixed(1)} s`),
        el("p.v-actions", {}, ["markdown", "html"].map((f) => el("a", {
          href: `${runPath(report.run_id)}/report?format=${f}`, download: `${report.run_id}.${f === "html" ? "html" : "md"}`,
        }, `Download ${f === "html" ? "HTML" : "Markdown"}`))));
    }

    async function loadRuns() {
      const list = await attempt(() => get("/research/runs"));
      if (!list) return;
      fill(runList, list.runs.length ? list.runs.map((r) => el("li", {},
        el("a", { href: `#/research/${r.run_id}`, dataset: { id: r.run_id }, "aria-current": r.run_id === current ? "page" : null },
          r.request.question), el("span.meta", {}, ` ${r.status} · ${unix(r.created_at)}`)))
        : el("li.hint", {}, "No runs yet."));
    }

    async function loadCorpus() {
      const list = await attempt(() => get("/research/corpus"));
      if (!list) return;
      fill(corpusList, list.documents.length ? list.documents.map((d) => el("li", {},
        el("span", {}, d.title || d.ref), el("span.meta", {}, ` ${d.format} · ${d.chars.toLocaleString()} chars · ${d.ref}`),
        el("button.quiet", { type: "button", "aria-label": `Remove ${d.title || d.ref}`, onclick: async () => {
          if (!await confirmAction(`Remove '${d.title || d.ref}' from the corpus?`, { action: "Remove" })) return;
          if (await attempt(() => del(`/research/corpus/${encodeURIComponent(d.doc_id)}`))) loadCorpus();
        } }, "Remove"))) : el("li.hint", {}, "The corpus is empty."));
    }

    async function addDocument(source) {
      const added = await attempt(() => post("/research/corpus", { source }));
      if (!added) return false;
      notify(`Added ${added.documents.length} document(s)${added.notes.length ? `; ${added.notes.join("; ")}` : ""}`);
      loadCorpus();
      return true;
    }

    async function loadAllowed() {
      const hosts = await attempt(() => get("/research/allowed"));
      if (!hosts) return;
      fill(allowList, hosts.length ? hosts.map((h) => el("li", {}, el("code", {}, h.host),
        el("button.quiet", { type: "button", "aria-label": `Remove ${h.host}`, onclick: async () => {
          if (!await confirmAction(`Stop research from fetching from ${h.host}?`, { action: "Remove" })) return;
          if (await attempt(async () => { await del(`/research/allowed/${encodeURIComponent(h.host)}`); return true; })) loadAllowed();
        } }, "Remove"))) : el("li.hint", {}, "No hosts: web research is off."));
    }

    async function allowHost(host) {
      const ok = await attempt(() => post("/research/allowed", { host }));
      if (ok) loadAllowed();
      return Boolean(ok);
    }

    loadRuns(); loadAllowed(); openRun(shell.path);
    return () => { stop(); clearTimeout(retry); current = null; };
  },
};
