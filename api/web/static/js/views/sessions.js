// Dev sessions view: the list, and one session (#/sessions/ID): its event timeline, its
// code blocks with every version, a diff between any two versions, rollback of a block to
// a version, status changes, promotion into a project, and recording a turn by hand.
// Sessions live in the host's database: nothing here brings a VM forward.

import { get, post, followOperation } from "../api.js";
import { el, fill, confirmAction, notify, attempt, when, seconds } from "../ui.js";
import { diffView } from "./projects.js";

const enc = encodeURIComponent;
const field = (id, text, control) => el("div.field", {}, el("label", { for: id }, text), control);
const STATUSES = ["active", "paused", "completed", "archived", "promoted"];
// The status changes a session allows (orchestrator/devsessions/transitions.py).
const ALLOWED = { active: ["paused", "completed", "archived", "promoted"],
  paused: ["active", "completed", "archived", "promoted"], completed: ["archived", "promoted"] };
const ACTIONS = [["pause", "paused", "Pause"], ["resume", "active", "Resume"],
  ["complete", "completed", "Complete"], ["archive", "archived", "Archive"]];
const CODE_EVENTS = new Set(["code_block_created", "code_block_modified", "code_block_rolled_back"]);
const versions = (n, from = 1) => Array.from({ length: n - from + 1 }, (_, i) => from + i);
const options = (values, chosen, label = String) =>
  values.map((v) => el("option", { value: String(v), selected: v === chosen }, label(v)));

export default {
  id: "sessions",
  title: "Sessions",
  subsystem: null,
  mount(root, shell) {
    let current = null;
    let openBlock = null; // the block shown, shown again after a reload

    // -- the list ------------------------------------------------------------------------
    async function showList() {
      const filter = el("select#session-filter", { name: "status" },
        el("option", { value: "" }, "all"), options(STATUSES, null));
      const rows = el("tbody#session-rows");
      const title = el("input#session-title", { name: "title", required: true, maxLength: 150, autocomplete: "off",
        placeholder: "what it is about" });
      const load = async () => {
        const list = await attempt(() => get(`/sessions${filter.value ? `?status=${filter.value}` : ""}`));
        if (!list || current !== null) return;
        fill(rows, list.length ? list.map((s) => el("tr", {},
          el("td", {}, el("a", { href: `#/sessions/${s.dev_session_id}` }, s.title)), el("td", {}, s.status),
          el("td", {}, s.user_id), el("td", {}, when(s.start_time)), el("td", {}, when(s.last_activity)),
          el("td", {}, s.promoted_to_project_id
            ? el("a", { href: `#/projects/${enc(s.promoted_to_project_id)}` }, s.promoted_to_project_id) : "—")))
          : el("tr", {}, el("td", { colSpan: 6 }, "No dev sessions.")));
      };
      filter.addEventListener("change", load);
      fill(root, el("h1", {}, "Dev sessions"), field("session-filter", "Status", filter),
        el("table.v-table", {}, el("caption.v-sr", {}, "Dev sessions"),
          el("thead", {}, el("tr", {}, ["Title", "Status", "User", "Started", "Last activity", "Project"]
            .map((h) => el("th", { scope: "col" }, h)))), rows),
        el("form.v-inline", { onsubmit: async (e) => {
          e.preventDefault();
          const s = await attempt(() => post("/sessions", { title: title.value.trim() }));
          if (s) location.hash = `#/sessions/${s.dev_session_id}`;
        } }, field("session-title", "New session titled", title), el("button#session-new", { type: "submit" }, "Start")));
      load();
    }

    // -- one session ---------------------------------------------------------------------
    async function showSession(id) {
      const path = `/sessions/${enc(id)}`;
      const back = el("p", {}, el("a", { href: "#/sessions" }, "← Dev sessions"));
      fill(root, back, el("p.hint", {}, "Loading…"));
      const [s, events] = await Promise.all([attempt(() => get(path)), attempt(() => get(`${path}/events`))]);
      if (current !== id) return;
      if (!s) return fill(root, back, el("p.hint", {}, "This session could not be loaded."));
      const reload = () => { if (current === id) showSession(id); };
      const paths = new Map(s.code_blocks.map((b) => [b.block_id, b.path]));
      const line = el("p#session-promote-progress", { "aria-live": "polite" });
      const project = el("input#promote-project", { name: "project", required: true, autocomplete: "off",
        value: s.promoted_to_project_id || "", placeholder: "project name" });
      const blockBox = el("div#session-block", { "aria-live": "polite" });
      const target = el("select#turn-target", { name: "target" }, el("option", { value: "" }, "(new blocks)"),
        s.code_blocks.map((b) => el("option", { value: b.block_id }, b.path)));
      const prompt = el("textarea#turn-prompt", { name: "prompt", rows: 2 });
      const answer = el("textarea#turn-answer", { name: "answer", rows: 5, required: true,
        placeholder: "The answer, its code in ``` fences" });
      const allowed = ALLOWED[s.status] || [];
      const u = s.summary;

      fill(root, back, el("h1", {}, s.title),
        el("dl.v-info", {}, [["Status", s.status], ["User", s.user_id], ["Started", when(s.start_time)],
          ["Ended", s.end_time ? when(s.end_time) : "—"], ["Duration", seconds(u.duration_seconds)],
          ["Events", u.event_count], ["Blocks", u.block_count],
          ["Languages", Object.entries(u.languages).map(([l, v]) => `${l} (${v.blocks} blocks, ${v.lines} lines)`).join(", ") || "—"],
          ["Project", s.promoted_to_project_id ? el("a", { href: `#/projects/${enc(s.promoted_to_project_id)}` }, s.promoted_to_project_id) : "—"]]
          .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v)))),
        el("div.v-actions", { role: "group", "aria-label": "Status" }, ACTIONS.map(([action, to, label]) =>
          el(`button#session-${action}`, { type: "button", disabled: !allowed.includes(to), onclick: async () => {
            if (action === "archive" && !await confirmAction(`Archive '${s.title}'? Archived sessions are final.`,
              { action: "Archive" })) return;
            if (await attempt(() => post(`${path}/status`, { action }))) reload();
          } }, label))),
        el("form.v-inline", { onsubmit: async (e) => {
          e.preventDefault();
          const name = project.value.trim();
          const done = await operation(() => post(`${path}/promote`, { project: name }), line);
          if (done) { notify(`Promoted into project ${name}`); reload(); }
        } }, field("promote-project", "Promote into project", project),
        el("button#session-promote", { type: "submit", disabled: !allowed.includes("promoted") }, "Promote")),
        line,
        el("section.v-panel", { "aria-labelledby": "session-blocks-h" }, el("h2#session-blocks-h", {}, "Code blocks"),
          s.code_blocks.length ? el("ul.v-list#session-blocks", {}, s.code_blocks.map((b) => el("li", {},
            el("button.v-file", { type: "button", dataset: { block: b.block_id }, onclick: (e) => {
              for (const x of root.querySelectorAll("#session-blocks button")) x.removeAttribute("aria-current");
              e.currentTarget.setAttribute("aria-current", "true");
              openBlock = b.block_id;
              showBlock(path, b, blockBox, reload);
            } }, b.path, el("span.meta", {}, ` ${b.language} · v${b.version}`)))))
            : el("p.hint", {}, "No code blocks yet."), blockBox),
        el("section.v-panel", { "aria-labelledby": "session-timeline-h" }, el("h2#session-timeline-h", {}, "Timeline"),
          el("ol.v-timeline#session-timeline", {}, (events || []).map((ev) => el("li", { dataset: { type: ev.event_type } },
            el("p.meta", {}, el("strong", {}, ev.event_type.replaceAll("_", " ")), ` · ${when(ev.timestamp)}`,
              ev.target_block_id ? ` · ${paths.get(ev.target_block_id) || ev.target_block_id.slice(0, 8)}` : ""),
            !ev.content ? null : CODE_EVENTS.has(ev.event_type) ? diffView(ev.content)
              : ev.content.length > 600 ? el("details", {}, el("summary", {}, `${ev.content.slice(0, 120)}…`), el("pre.v-text", {}, ev.content))
                : el("pre.v-text", {}, ev.content))))),
        el("section.v-panel", { "aria-labelledby": "session-turn-h" }, el("h2#session-turn-h", {}, "Record a turn"),
          el("form.v-form", { onsubmit: async (e) => {
            e.preventDefault();
            const r = await attempt(() => post(`${path}/turns`, { prompt: prompt.value, answer: answer.value,
              ...(target.value ? { target: target.value } : {}) }));
            if (r) { notify(`Turn recorded: ${r.changes.length} block change(s)`); reload(); }
          } }, field("turn-prompt", "Prompt", prompt), field("turn-answer", "Answer", answer),
          field("turn-target", "Unnamed fences revise", target), el("button#turn-record", { type: "submit" }, "Record turn"))));
      if (openBlock) root.querySelector(`#session-blocks [data-block="${openBlock}"]`)?.click();
    }

    // One block: a version's content, rollback to it, and a diff between any two versions.
    function showBlock(path, block, box, reload) {
      const bpath = `${path}/blocks/${enc(block.block_id)}`;
      const latest = block.version;
      const version = el("select#block-version", { name: "version" }, options(versions(latest), latest, (v) => `v${v}`));
      const from = el("select#diff-from", { name: "from" },
        options(versions(latest, 0), latest - 1, (v) => (v ? `v${v}` : "v0 (no file)")));
      const to = el("select#diff-to", { name: "to" }, options(versions(latest, 0), latest, (v) => (v ? `v${v}` : "v0 (no file)")));
      const content = el("pre.v-code#block-content", { tabindex: "0" }, block.content);
      const diffBox = el("div#block-diff-box");
      const rollback = el("button#block-rollback", { type: "button", disabled: true, onclick: async () => {
        const v = Number(version.value);
        if (!await confirmAction(`Make version ${v} of ${block.path} its next version (v${latest + 1})?`, { action: "Roll back" })) return;
        const change = await attempt(() => post(`${bpath}/rollback`, { to: v }));
        if (change) { notify(`${block.path} is now v${change.block.version}`); reload(); }
      } }, "Roll back to this version");
      version.addEventListener("change", async () => {
        const v = Number(version.value);
        rollback.disabled = v === latest;
        const b = await attempt(() => get(`${bpath}?version=${v}`));
        if (b) content.textContent = b.content;
      });
      const showDiff = async () => {
        const d = await attempt(() => get(`${bpath}/diff?from=${from.value}&to=${to.value}`));
        if (d) fill(diffBox, diffView(d.diff, "block-diff"));
      };
      fill(box, el("h3", {}, block.path, el("span.meta", {}, ` ${block.language}`)),
        el("div.v-inline", {}, field("block-version", "Version", version), rollback), content,
        el("form.v-inline", { onsubmit: (e) => { e.preventDefault(); showDiff(); } },
          field("diff-from", "Diff from", from), field("diff-to", "to", to),
          el("button#block-diff-show", { type: "submit" }, "Show diff")), diffBox);
      if (latest > 1) showDiff();
    }

    async function operation(start, line) {
      const op = await attempt(start);
      if (!op) return null;
      line.textContent = "promote: started";
      const view = await attempt(() => followOperation(op.id, (text) => { line.textContent = `promote: ${text}`; }));
      line.textContent = view ? `promote: done (${view.result?.commits?.length ?? 0} commits)` : "promote: failed";
      return view;
    }

    function show(id) {
      current = id;
      return id ? showSession(id) : showList();
    }
    show(shell.path || null);
    return () => { current = undefined; };
  },
};
