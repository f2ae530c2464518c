// Artifacts view: the list and a create form; one artifact (#/artifacts/NAME): its
// versions and source (edited into a new version), runs in a sandbox of the artifacts VM
// with stdout/stderr streamed live and the result (exit code, limit hit, produced files),
// earlier runs, and for a web artifact Open (an overlay over the current view while the
// foreground VM keeps running) and Stop.

import { get, post, del, postStream } from "../api.js";
import { el, fill, confirmAction, notify, attempt, when, seconds } from "../ui.js";

const enc = encodeURIComponent;
const field = (id, text, control, attrs = {}) => el("div.field", attrs, el("label", { for: id }, text), control);
const ENTRY = { python: "main.py", javascript: "main.js", bash: "main.sh", c: "main.c", cpp: "main.cpp",
  rust: "main.rs", go: "main.go", html: "index.html" }; // protocol Language → a first file
const KINDS = ["program", "web", "document", "data"];
const select = (id, values, chosen) => el(`select#${id}`, { name: id },
  values.map((v) => el("option", { value: String(v), selected: v === chosen }, String(v))));

export default {
  id: "artifacts",
  title: "Artifacts",
  subsystem: "artifacts",
  mount(root, shell) {
    let current = null;
    let running = null; // the AbortController of a streaming run

    function show(name) {
      running?.abort();
      current = name;
      return name ? showArtifact(name) : showList();
    }

    // -- the list ------------------------------------------------------------------------
    async function showList() {
      const rows = el("tbody#artifact-rows");
      const name = el("input#artifact-name", { name: "name", required: true, autocomplete: "off",
        pattern: "[a-z0-9][a-z0-9._\\-]{0,62}", title: "lower-case letters, digits, '.', '_' and '-'", placeholder: "hello" });
      const language = select("artifact-language", Object.keys(ENTRY), "python");
      const kind = select("artifact-kind", KINDS, "program");
      const entry = el("input#artifact-entry", { name: "entry", autocomplete: "off", placeholder: ENTRY.python });
      const source = el("textarea.v-code#artifact-source", { name: "source", rows: 10, required: true, spellcheck: "false" });
      language.addEventListener("change", () => {
        entry.placeholder = ENTRY[language.value];
        if (language.value === "html") kind.value = "web";
      });
      fill(root, el("h1", {}, "Artifacts"),
        el("table.v-table", {}, el("caption.v-sr", {}, "Artifacts"),
          el("thead", {}, el("tr", {}, ["Name", "Kind", "Language", "Version", "Status", "Updated"]
            .map((h) => el("th", { scope: "col" }, h)))), rows),
        el("form.v-form", { onsubmit: async (e) => {
          e.preventDefault();
          const path = entry.value.trim() || ENTRY[language.value];
          const a = await attempt(() => post("/artifacts", { name: name.value.trim(), language: language.value,
            kind: kind.value, entry: path, files: [{ path, content: source.value }] }));
          if (a) { notify(`Artifact ${a.name} created`); location.hash = `#/artifacts/${enc(a.name)}`; }
        } }, el("h2", {}, "New artifact"),
        el("div.v-row", {}, field("artifact-name", "Name", name), field("artifact-language", "Language", language),
          field("artifact-kind", "Kind", kind), field("artifact-entry", "Entry file", entry)),
        field("artifact-source", "Source of the entry file", source),
        el("button.primary#artifact-create", { type: "submit" }, "Create artifact")));
      const list = await attempt(() => get("/artifacts"));
      if (!list || current !== null) return;
      fill(rows, list.length ? list.map((a) => el("tr", {},
        el("td", {}, el("a", { href: `#/artifacts/${enc(a.name)}` }, a.name)), el("td", {}, a.kind),
        el("td", {}, a.language), el("td", {}, `v${a.latest_version}`), el("td", {}, a.status), el("td", {}, when(a.updated_at))))
        : el("tr", {}, el("td", { colSpan: 6 }, "No artifacts yet.")));
    }

    // -- one artifact --------------------------------------------------------------------
    async function showArtifact(name) {
      const path = `/artifacts/${enc(name)}`;
      const back = el("p", {}, el("a", { href: "#/artifacts" }, "← Artifacts"));
      fill(root, back, el("p.hint", {}, "Loading…"));
      const a = await attempt(() => get(path));
      if (current !== name) return;
      if (!a) return fill(root, back, el("p.hint", {}, "This artifact could not be loaded."));
      const reload = () => { if (current === name) showArtifact(name); };
      const output = el("pre.v-output#artifact-output", { "aria-live": "polite", tabindex: "0" });
      const resultBox = el("div#artifact-result", { "aria-live": "polite" });
      const runRows = el("tbody#artifact-runs");
      const version = el("select#artifact-version", { name: "version" }, a.versions.slice().reverse().map((v) =>
        el("option", { value: String(v.number) }, `v${v.number}${v.message ? ` — ${v.message}` : ""}`)));
      const args = el("input#artifact-args", { name: "args", autocomplete: "off", placeholder: "space-separated" });
      const stdin = el("textarea#artifact-stdin", { name: "stdin", rows: 2 });
      const runButton = el("button.primary#artifact-run", { type: "submit" }, "Run");
      const stopButton = el("button#artifact-stop", { type: "button", disabled: true, onclick: () => running?.abort() }, "Stop");
      const editors = a.files.map((f, i) => f.base64 ? null
        : el("textarea.v-code", { id: `artifact-file-${i}`, rows: Math.min(20, f.content.split("\n").length + 1),
          spellcheck: "false" }, f.content));
      const message = el("input#artifact-message", { name: "message", autocomplete: "off" });
      const web = a.kind === "web";

      // One run event into the output (live, or replayed from an earlier run's log).
      const take = (ev) => {
        if (ev.kind === "stdout" || ev.kind === "stderr") output.append(el(`span.${ev.kind}`, {}, ev.data || ""));
        else if (ev.kind === "phase") output.append(el("span.v-phase", {}, `— ${ev.phase} —\n`));
        if (output.scrollHeight - output.scrollTop - output.clientHeight < 80) output.scrollTop = output.scrollHeight;
        return ev.kind === "result" ? ev.result : null;
      };
      const run = async () => {
        running = new AbortController();
        runButton.disabled = true; stopButton.disabled = false;
        fill(output); fill(resultBox, el("p.hint", {}, "Running…"));
        let result = null, runId = null;
        await attempt(() => postStream(`${path}/runs`, { version: Number(version.value), stdin: stdin.value,
          args: args.value.trim() ? args.value.trim().split(/\s+/) : [] }, (event, data) => {
          if (event === "error") notify(`${data.error}: ${data.detail}`, { error: true });
          else if (data?.kind === "started") runId = data.data;
          else if (data) result = take(data) || result;
        }, { signal: running.signal }));
        const stopped = running.signal.aborted;
        running = null;
        runButton.disabled = false; stopButton.disabled = true;
        if (current !== name) return;
        loadRuns();
        fill(resultBox, result ? resultView(result, runId) : el("p.hint", {}, stopped ? "Stopped following the run." : "The run ended without a result."));
      };

      fill(root, back, el("h1", {}, name),
        el("dl.v-info", {}, [["Kind", a.kind], ["Language", a.language], ["Entry", a.entry], ["Status", a.status],
          ["Latest version", `v${a.latest_version}`], ["Created", when(a.created_at)], ["Updated", when(a.updated_at)]]
          .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v)))),
        el("div.v-actions", {},
          web ? el("button.primary#artifact-open", { type: "button", onclick: () => attempt(async () => {
            const view = await post(`${path}/open`);
            shell.openOverlay(view.url, name);
          }) }, "Open") : null,
          web ? el("button#artifact-web-stop", { type: "button", onclick: () => attempt(async () => {
            const st = await del("/artifacts/web");
            notify(`Stopped the web artifact (${st.entry})`);
          }) }, "Stop web artifact") : null,
          el("button.danger#artifact-delete", { type: "button", onclick: async () => {
            if (!await confirmAction(`Delete artifact ${name} with its versions and runs?`)) return;
            if (await attempt(async () => { await del(path); return true; })) {
              notify(`Artifact ${name} deleted`); location.hash = "#/artifacts";
            }
          } }, "Delete")),
        a.language === "html" ? null : el("section.v-panel", { "aria-labelledby": "artifact-run-h" },
          el("h2#artifact-run-h", {}, "Run"),
          el("form.v-form", { onsubmit: (e) => { e.preventDefault(); run(); } },
            el("div.v-row", {}, field("artifact-version", "Version", version), field("artifact-args", "Arguments", args)),
            field("artifact-stdin", "Standard input", stdin), el("div.v-actions", {}, runButton, stopButton)),
          el("h3", {}, "Output"), output, resultBox,
          el("h3", {}, "Earlier runs"),
          el("table.v-table", {}, el("thead", {}, el("tr", {}, ["Run", "Version", "Outcome", "Exit", "Duration", "Started", ""]
            .map((h) => el("th", { scope: "col" }, h)))), runRows)),
        el("section.v-panel", { "aria-labelledby": "artifact-source-h" }, el("h2#artifact-source-h", {}, `Source (v${a.latest_version})`),
          a.files.map((f, i) => f.base64 ? el("p", {}, el("code", {}, f.path), " (binary)")
            : field(`artifact-file-${i}`, f.path, editors[i])),
          el("form.v-inline", { onsubmit: async (e) => {
            e.preventDefault();
            const files = a.files.map((f, i) => (f.base64 ? { path: f.path, base64: f.content } : { path: f.path, content: editors[i].value }));
            const v = await attempt(() => post(`${path}/versions`, { files, message: message.value }));
            if (v) { notify(`Saved as v${v.number}`); reload(); }
          } }, field("artifact-message", "Change note", message), el("button#artifact-save", { type: "submit" }, "Save as new version")),
          el("h3", {}, "Versions"),
          el("ol.v-list#artifact-versions", {}, a.versions.map((v) => el("li", {}, `v${v.number} · ${when(v.created_at)}`,
            v.message ? ` · ${v.message}` : "")))));

      async function loadRuns() {
        const runs = await attempt(() => get(`${path}/runs`));
        if (!runs || current !== name) return runs;
        fill(runRows, runs.length ? runs.slice().reverse().map((r) => el("tr", {},
          el("td", {}, el("code", {}, r.id)), el("td", {}, `v${r.version}`), el("td", {}, r.outcome ?? "—"),
          el("td", {}, r.exit_code ?? r.signal ?? "—"), el("td", {}, r.duration_s == null ? "—" : seconds(r.duration_s)),
          el("td", {}, when(r.started_at)),
          el("td", {}, el("button", { type: "button", "aria-label": `Show run ${r.id}`, onclick: () => attempt(async () => {
            const log = await get(`/artifacts/runs/${enc(r.id)}`);
            fill(output);
            for (const ev of log.events) take(ev);
            fill(resultBox, log.result ? resultView(log.result, log.id) : el("p.hint", {}, "No result recorded."));
            output.focus();
          }) }, "Show")))) : el("tr", {}, el("td", { colSpan: 7 }, "No runs yet.")));
        return runs;
      }
      if (a.language !== "html") loadRuns();
    }

    function resultView(r, runId) {
      const rows = [["Outcome", r.outcome], ["Exit code", r.exit_code], ["Signal", r.signal], ["Limit hit", r.limit],
        ["Duration", seconds(r.duration_s)], ["Compile", r.compile_s == null ? null : seconds(r.compile_s)],
        ["CPU", seconds(r.cpu_s)], ["Peak memory", r.peak_memory_mib == null ? null : `${r.peak_memory_mib.toFixed(0)} MiB`],
        ["Output", r.truncated ? "truncated (over the limit)" : null], ["Error", r.error]];
      return el("div.v-result", { dataset: { outcome: r.outcome } },
        el("dl.v-info", {}, rows.filter(([, v]) => v !== null && v !== undefined)
          .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v))))),
        r.diagnostics.length ? el("ul.v-diagnostics", {}, r.diagnostics.map((d) =>
          el("li", {}, `${d.file}:${d.line}${d.column ? `:${d.column}` : ""} ${d.severity}: ${d.message}`))) : null,
        r.files.length ? [el("h4", {}, "Produced files"), el("ul.v-list#artifact-files", {}, r.files.map((f) => el("li", {},
          runId ? el("a", { href: `/artifacts/runs/${enc(runId)}/file?path=${enc(f.path)}`, target: "_blank", rel: "noopener" }, f.path)
            : el("code", {}, f.path), el("span.meta", {}, ` ${f.size} bytes`))))] : null);
    }

    show(shell.path || null);
    return () => { running?.abort(); current = undefined; };
  },
};
