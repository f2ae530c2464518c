// Collab view: multi-agent collaborations. #/collab lists the runs and starts one;
// #/collab/ID shows one run's transcript, growing live from its event stream, with
// Cancel and Resume.

import { get, post } from "../api.js";
import { el, fill, notify, attempt, confirmAction, seconds, when } from "../ui.js";

const DEFAULT_ROLES = "researcher,analyst,synthesizer";
const ROLES_PATTERN = "[a-z](-?[a-z0-9])*(,[a-z](-?[a-z0-9])*)*";
const at = (epoch) => when(new Date(epoch * 1000).toISOString());

function entryNode(e) {
  if (e.kind === "note") return el("li.entry.note", { dataset: { seq: e.seq } }, el("span.meta", {}, `#${e.seq} host: `), e.content);
  const cost = [`${e.prompt_tokens + e.completion_tokens} tokens`, `turn ${seconds(e.turn_s)}`,
    e.swap_s ? `swap ${seconds(e.swap_s)}${e.swap_path ? ` (${e.swap_path})` : ""}` : null].filter(Boolean).join(" · ");
  return el(`li.entry.turn${e.action === "final_answer" ? ".final" : ""}`, { dataset: { seq: e.seq } },
    el("h3.who", {}, `#${e.seq} ${e.role}`, e.vm ? el("span.meta", {}, ` on ${e.vm}`) : null, e.action === "final_answer" ? " — final answer" : ""),
    el("div.text", {}, e.content),
    e.findings?.length ? el("ul.findings", { "aria-label": "Findings" }, e.findings.map((f) => el("li", {}, f))) : null,
    el("p.meta", {}, cost),
    e.strike ? el("p.warn", {}, `No progress: ${e.strike}`) : null,
    e.fallback ? el("p.warn", {}, `Fallback: ${e.fallback}`) : null);
}

function listView(root, shell) {
  const task = el("textarea#collab-task", { required: true, rows: 3, maxLength: 4000 });
  const roles = el("input#collab-roles", { placeholder: DEFAULT_ROLES, pattern: ROLES_PATTERN, spellcheck: "false" });
  const placement = el("select#collab-placement", {},
    el("option", { value: "per-role" }, "per role (one agent VM each)"), el("option", { value: "shared" }, "shared (one agent VM)"));
  const turns = el("input#collab-max-turns", { type: "number", min: 1, max: 200, step: 1, placeholder: "6" });
  const start = el("button#collab-start.primary", { type: "submit" }, "Start");
  const body = el("tbody");

  async function submit(event) {
    event.preventDefault();
    const request = { task: task.value.trim(), placement: placement.value };
    if (roles.value.trim()) request.roles = roles.value.replace(/\s+/g, "");
    if (turns.value) request.max_turns = parseInt(turns.value, 10);
    start.disabled = true;
    notify("Starting the collaboration…");
    const view = await attempt(() => post("/collab", request));
    start.disabled = false;
    if (view) { notify(`Collaboration ${view.id} started.`); shell.navigate(`#/collab/${view.id}`); }
  }

  fill(root,
    el("div.view-head", {}, el("h1", {}, "Collaborations")),
    el("form.card#collab-form", { onsubmit: submit, "aria-labelledby": "collab-new-h" },
      el("h2#collab-new-h", {}, "New collaboration"),
      el("label", { for: "collab-task" }, "Task"), task,
      el("div.grid", {},
        el("div", {}, el("label", { for: "collab-roles" }, "Roles, comma-separated (the last one finishes)"), roles),
        el("div", {}, el("label", { for: "collab-placement" }, "Placement"), placement),
        el("div", {}, el("label", { for: "collab-max-turns" }, "Max turns"), turns)),
      start),
    el("h2", {}, "Runs"),
    el("div.scroll", {}, el("table#collab-list", {},
      el("thead", {}, el("tr", {}, ["Run", "Task", "Status", "Turns", "Tokens", "Started"].map((h) => el("th", { scope: "col" }, h)))), body)));

  attempt(async () => {
    const { collaborations } = await get("/collab");
    fill(body, collaborations.map((c) => el("tr", {},
      el("th", { scope: "row" }, el("a", { href: `#/collab/${c.id}` }, c.id)),
      el("td.task", {}, c.task.length > 120 ? `${c.task.slice(0, 120)}…` : c.task),
      el("td", {}, el(`span.badge.status-${c.status}`, {}, c.status)),
      el("td.num", {}, c.turns), el("td.num", {}, c.tokens), el("td", {}, at(c.created_at)))));
    if (!collaborations.length) body.append(el("tr", {}, el("td", { colSpan: 6 }, "No collaborations yet.")));
  });
}

function runView(root, shell, id) {
  const enc = encodeURIComponent(id);
  const head = el("div.card#collab-head", { "aria-live": "polite" });
  const list = el("ol#collab-transcript.transcript", { "aria-label": "Transcript" });
  const cancel = el("button#collab-cancel", { type: "button", onclick: doCancel }, "Cancel");
  const resume = el("button#collab-resume", { type: "button", onclick: doResume }, "Resume");
  const following = el("span#collab-following.meta", { role: "status" });
  let lastSeq = 0;
  let source = null;
  let refreshTimer = null;

  function showHead(c) {
    const running = c.status === "active";
    cancel.hidden = !running;
    resume.hidden = !["paused", "cancelled", "error"].includes(c.status);
    fill(head,
      el("p", {}, el(`span.badge.status-${c.status}`, {}, c.status), ` ${c.turns} turns · ${c.tokens} tokens · ${c.strikes} strikes · `
        + `${seconds(c.elapsed_s)} elapsed (${seconds(c.swap_s)} swapping) · placement ${c.placement} · policy ${c.policy}`),
      el("p.task", {}, c.task),
      el("p.meta", {}, `Team (${c.team.order}): ${c.team.roles.map((r) => `${r.name}${c.vms[r.name] ? ` on ${c.vms[r.name]}` : ""}`).join(", ")}`),
      c.end_reason ? el("p", {}, `Ended: ${c.end_reason}`) : null,
      c.error ? el("p.error", {}, c.error) : null,
      c.final_answer ? el("section.final", { "aria-label": "Final answer" }, el("h2", {}, "Final answer"), el("div.text", {}, c.final_answer)) : null);
  }

  const refresh = () => attempt(async () => showHead(await get(`/collab/${enc}`)));
  const refreshSoon = () => { clearTimeout(refreshTimer); refreshTimer = setTimeout(refresh, 500); };

  function append(entry) {
    if (entry.seq <= lastSeq) return; // a reconnect sends from Last-Event-ID; be safe anyway
    lastSeq = entry.seq;
    list.querySelector(".placeholder")?.remove();
    list.append(entryNode(entry));
  }

  /** Follow the run's events; the stream ends with [DONE] once the run has stopped. */
  function follow() {
    stopFollowing();
    const es = new EventSource(`/collab/${enc}/events?after=${lastSeq}`);
    source = es;
    following.textContent = "following live…";
    es.addEventListener("message", (e) => {
      if (e.data === "[DONE]") { stopFollowing(); following.textContent = "run stopped"; refresh(); return; }
      try { append(JSON.parse(e.data)); } catch { return; }
      refreshSoon();
    });
    es.addEventListener("error", (e) => {
      if (e.data) { // the server's in-band error, not a dropped connection
        const body = JSON.parse(e.data);
        notify(`${body.error}: ${body.detail}`, { error: true });
        stopFollowing();
        following.textContent = "stream failed";
      } else if (es.readyState === EventSource.CLOSED) {
        following.textContent = "stream closed";
        notify("The transcript stream was refused.", { error: true });
      }
    });
  }

  function stopFollowing() {
    if (source) source.close();
    source = null;
  }

  async function doCancel() {
    if (!await confirmAction(`Cancel collaboration ${id}? It stops after its current turn; you can resume it later.`, { action: "Cancel run" })) return;
    const view = await attempt(() => post(`/collab/${enc}/cancel`, {}));
    if (view) { showHead(view); notify(`Collaboration ${id} cancelled.`); }
  }

  async function doResume() {
    resume.disabled = true;
    const view = await attempt(() => post(`/collab/${enc}/resume`, {}));
    resume.disabled = false;
    if (view) { showHead(view); notify(`Collaboration ${id} resumed.`); follow(); }
  }

  fill(root,
    el("div.view-head", {}, el("h1", {}, `Collaboration ${id}`), el("a", { href: "#/collab" }, "All runs")),
    head, el("div.actions", {}, cancel, resume, following),
    el("h2", {}, "Transcript"), list);
  cancel.hidden = resume.hidden = true;

  attempt(async () => {
    const transcript = await get(`/collab/${enc}/transcript?format=json`);
    showHead(transcript.collab);
    transcript.entries.forEach(append);
    if (!transcript.entries.length) list.append(el("li.entry.note.placeholder", {}, "No entries yet."));
    follow();
  });
  return () => { stopFollowing(); clearTimeout(refreshTimer); };
}

export default {
  id: "collab",
  title: "Collab",
  subsystem: null,
  mount(root, shell) {
    return shell.path ? runView(root, shell, shell.path.split("/")[0]) : listView(root, shell);
  },
};
