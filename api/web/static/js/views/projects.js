// Projects view: the projects menu (each a VM holding a git repository) with create from
// a repository, a dev session or nothing; and one project (#/projects/NAME): its info and
// ssh line, the file tree at HEAD, the git log with each commit's diff, snapshots and
// rollback, undo of the last AI commit, archive/restore, delete. Viewing never swaps VMs:
// only "Open in front" brings the project's VM forward.

import { get, post, del, followOperation } from "../api.js";
import { el, fill, confirmAction, notify, attempt, when, mib } from "../ui.js";

const enc = encodeURIComponent;
const field = (id, text, control, attrs = {}) => el("div.field", attrs, el("label", { for: id }, text), control);
const size = (n) => (n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : mib(n / (1 << 20)));

/** A unified diff as lines classed add/del/hunk/meta (text only, never markup). */
export function diffView(text, id) {
  let body = false; // inside a hunk, '+++' and '---' are an added and a removed line
  const kind = (l) => {
    if (l.startsWith("@@")) { body = true; return "hunk"; }
    if (l.startsWith("diff ")) body = false;
    if (!body) return "meta";
    return l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "ctx";
  };
  return el(`pre.v-diff${id ? `#${id}` : ""}`, { tabindex: "0" }, text ? text.replace(/\n$/, "").split("\n").map((l) =>
    el(`span.${kind(l)}`, {}, `${l}\n`)) : "(no changes)");
}

/** Start an operation (a 202 answer) and follow it, its lines shown in `line`. */
async function operation(start, label, line) {
  const op = await attempt(start);
  if (!op) return null;
  line.textContent = `${label}: started`;
  const view = await attempt(() => followOperation(op.id, (text) => { line.textContent = `${label}: ${text}`; }));
  line.textContent = `${label}: ${view ? "done" : "failed"}`;
  if (view) notify(`${view.kind} ${view.target}: done`); // the line may be re-rendered away
  return view;
}

export default {
  id: "projects",
  title: "Projects",
  subsystem: "projects",
  mount(root, shell) {
    let current = null;
    let whenFront = null; // {vm, load}: read the repository once this VM is in front
    const states = new Map(); // vm name -> the <td>/<dd> showing its state, kept live
    const track = (vm, node) => { states.set(vm, node); return node; };
    shell.on("status", (s) => {
      for (const vm of s?.vms || []) if (states.has(vm.name)) states.get(vm.name).textContent = vm.state;
      if (whenFront && s?.foreground === whenFront.vm) whenFront.load();
    });

    function show(name) {
      current = name;
      states.clear();
      whenFront = null;
      return name ? showProject(name) : showMenu();
    }

    // -- the menu ------------------------------------------------------------------------
    async function showMenu() {
      const table = el("tbody#project-rows");
      const name = el("input#project-name", { name: "name", required: true, autocomplete: "off",
        pattern: "[a-z0-9][a-z0-9\\-]*", title: "lower-case letters, digits and '-'", placeholder: "my-project" });
      const from = el("select#project-from", { name: "from" },
        el("option", { value: "empty" }, "an empty repository"),
        el("option", { value: "repo" }, "a repository URL or path"),
        el("option", { value: "session" }, "a dev session"));
      const repo = el("input#project-repo", { name: "repo", autocomplete: "off", placeholder: "https://… or /path/to/repo" });
      const session = el("input#project-session", { name: "session", autocomplete: "off", placeholder: "session id or prefix" });
      const memory = el("input#project-memory", { name: "memory", type: "number", min: "256", step: "256", placeholder: "default" });
      const repoField = field("project-repo", "Repository", repo, { hidden: true });
      const sessionField = field("project-session", "Dev session", session, { hidden: true });
      from.addEventListener("change", () => {
        repoField.hidden = from.value !== "repo"; sessionField.hidden = from.value !== "session";
        repo.required = from.value === "repo"; session.required = from.value === "session";
      });
      const line = el("p#project-create-progress", { "aria-live": "polite" });
      const button = el("button.primary#project-create", { type: "submit" }, "Create project");
      const form = el("form.v-form", { onsubmit: async (e) => {
        e.preventDefault();
        const body = { name: name.value.trim() };
        if (memory.value) body.memory_mib = Number(memory.value);
        button.disabled = true;
        // From a dev session: promotion creates the project and commits the session's code.
        const done = from.value === "session"
          ? await operation(() => post(`/sessions/${enc(session.value.trim())}/promote`,
            { project: body.name, ...(body.memory_mib ? { memory_mib: body.memory_mib } : {}) }), "promote", line)
          : await operation(() => post("/projects", from.value === "repo" ? { ...body, repo: repo.value.trim() } : body),
            "create", line);
        button.disabled = false;
        if (done) { notify(`Project ${body.name} created`); location.hash = `#/projects/${enc(body.name)}`; }
        else loadList(); // a failed create may still leave a record behind
      } }, el("h2", {}, "New project"),
      el("div.v-row", {}, field("project-name", "Name", name), field("project-from", "From", from),
        repoField, sessionField, field("project-memory", "Memory (MiB)", memory)), button, line);
      fill(root, el("h1", {}, "Projects"),
        el("table.v-table", {}, el("caption.v-sr", {}, "Projects and their VMs"),
          el("thead", {}, el("tr", {}, ["Name", "VM", "Source", "AI commits", "Last used"].map((h) => el("th", { scope: "col" }, h)))),
          table), form);
      async function loadList() {
        const list = await attempt(() => get("/projects"));
        if (!list || current !== null) return;
        fill(table, list.length ? list.map((p) => el("tr", {},
          el("td", {}, el("a", { href: `#/projects/${enc(p.name)}` }, p.name), p.archived ? " (archived)" : ""),
          track(p.vm_name, el("td", {}, p.vm_state)),
          el("td", {}, `${p.source_kind} ${p.source}`.trim()), el("td", {}, String(p.ai_commits)),
          el("td", {}, when(p.last_used))))
          : el("tr", {}, el("td", { colSpan: 5 }, "No projects yet.")));
      }
      loadList();
    }

    // -- one project ---------------------------------------------------------------------
    async function showProject(name) {
      const path = `/projects/${enc(name)}`;
      fill(root, el("p", {}, el("a", { href: "#/projects" }, "← Projects")), el("h1", {}, name), el("p.hint", {}, "Loading…"));
      const p = await attempt(() => get(path));
      if (current !== name) return;
      if (!p) return fill(root.lastChild, "This project could not be loaded.");
      const line = el("p#project-progress", { "aria-live": "polite" });
      const reload = () => { if (current === name) showProject(name); };
      const button = (id, text, fn) => el(`button#${id}`, { type: "button", onclick: fn }, text);
      const ssh = p.ssh_command || `somnus project ssh ${name}`;
      const snapName = el("input#snapshot-name", { name: "snapshot", required: true, autocomplete: "off", placeholder: "before-refactor" });
      const snapNote = el("input#snapshot-description", { name: "description", autocomplete: "off" });
      const tree = el("div#project-tree", { "aria-live": "polite" }, el("p.hint", {}, "Loading the tree…"));
      const fileBox = el("div#project-file-view", { "aria-live": "polite" }, el("p.hint", {}, "Choose a file."));
      const log = el("ol.v-log#project-log", {}, el("li.hint", {}, "Loading the history…"));
      const diffBox = el("div#project-commit", { "aria-live": "polite" }, el("p.hint", {}, "Choose a commit."));

      fill(root,
        el("p", {}, el("a", { href: "#/projects" }, "← Projects")),
        el("h1", {}, name, p.archived ? " (archived)" : ""),
        el("dl.v-info", {}, [["VM", p.vm_name], ["State", track(p.vm_name, el("span#project-state", {}, p.vm_state))],
          ["Branch", p.branch], ["Source", p.source_kind === "session"
            ? ["session ", el("a", { href: `#/sessions/${enc(p.source)}` }, p.source.slice(0, 8))]
            : `${p.source_kind} ${p.source}`.trim()], ["AI commits", String(p.ai_commits)],
          ["Created", when(p.created_at)], ["Last used", when(p.last_used)], ["SSH port", p.ssh_port ?? "—"],
          ["Note for the model", p.pending_note]]
          .filter(([, v]) => v !== null && v !== undefined && v !== "")
          .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v)))),
        el("div.v-ssh", {}, el("label", { for: "project-ssh" }, "Shell in the project folder"),
          el("input#project-ssh", { readOnly: true, value: ssh, size: ssh.length + 2, spellcheck: "false" }),
          button("project-ssh-copy", "Copy", () => attempt(async () => {
            // No clipboard API off a secure origin: select the field and copy the old way.
            try { await navigator.clipboard.writeText(ssh); } catch {
              const input = root.querySelector("#project-ssh");
              input.select();
              if (!document.execCommand("copy")) throw new Error("copy refused by the browser: select and copy it");
            }
            notify("Copied");
          })),
          el("p.hint", {}, "Or plain ", el("code", {}, `ssh somnus-${name}`), " (editors too) after ",
            el("code", {}, `somnus project ssh-config ${name} >> ~/.ssh/config`), ".")),
        el("div.v-actions", {},
          button("project-activate", "Open in front", async () => {
            if (await shell.activate(p.vm_name)) whenFront?.load();
          }),
          button("project-undo", "Undo last AI commit", async () => {
            if (!await confirmAction(`Revert the last AI commit of ${name} with a new commit?`, { action: "Undo" })) return;
            if (await operation(() => post(`${path}/undo`), "undo", line)) reload();
          }),
          p.archived
            ? button("project-restore", "Restore", async () => {
              if (await operation(() => post(`${path}/restore`, { start: true }), "restore", line)) reload();
            })
            : button("project-archive", "Archive", async () => {
              if (!await confirmAction(`Stop ${name}'s VM and compact its disk?`, { action: "Archive" })) return;
              if (await operation(() => post(`${path}/archive`), "archive", line)) reload();
            }),
          el("button.danger#project-delete", { type: "button", onclick: async () => {
            if (!await confirmAction(`Delete project ${name}: its VM, disk, snapshots and records?`)) return;
            if (await attempt(async () => { await del(path); return true; })) {
              notify(`Project ${name} deleted`); location.hash = "#/projects";
            }
          } }, "Delete")),
        line,
        el("section.v-panel", { "aria-labelledby": "project-files-h" }, el("h2#project-files-h", {}, "Files at HEAD"),
          el("div.v-split", {}, tree, fileBox)),
        el("section.v-panel", { "aria-labelledby": "project-log-h" }, el("h2#project-log-h", {}, "History"),
          el("div.v-split", {}, log, diffBox)),
        el("section.v-panel", { "aria-labelledby": "project-snap-h" }, el("h2#project-snap-h", {}, "Snapshots"),
          el("ul.v-list#project-snapshots", {}, p.snapshots.length ? p.snapshots.map((s) => el("li", {},
            el("strong", {}, s.name), el("span.meta", {}, ` ${s.state} · ${when(new Date(s.created * 1000).toISOString())}${s.description ? ` · ${s.description}` : ""} `),
            el("button", { type: "button", "aria-label": `Roll back to ${s.name}`, onclick: async () => {
              if (!await confirmAction(`Return ${name}'s VM, repository included, to snapshot '${s.name}'? Later changes are lost.`,
                { action: "Roll back" })) return;
              const r = await attempt(() => post(`${path}/snapshots/${enc(s.name)}/rollback`));
              if (r) { notify(`Rolled back to ${s.name} (${r.state})`); reload(); }
            } }, "Roll back"))) : el("li.hint", {}, "No snapshots.")),
          el("form.v-inline", { onsubmit: async (e) => {
            e.preventDefault();
            const s = await attempt(() => post(`${path}/snapshots`, { name: snapName.value.trim(), description: snapNote.value }));
            if (s) { notify(`Snapshot ${s.name} taken (${s.state})`); reload(); }
          } }, field("snapshot-name", "Snapshot name", snapName), field("snapshot-description", "Note", snapNote),
          el("button#project-snapshot", { type: "submit" }, "Snapshot"))));

      // The repository is read over SSH from the VM in front only (409 otherwise): viewing
      // never swaps, so wait for "Open in front" (or another swap bringing it forward).
      whenFront = { vm: p.vm_name, load: () => {
        whenFront = null;
        loadTree(path, tree, fileBox, name);
        loadLog(path, log, diffBox, name);
      } };
      if (shell.status?.foreground === p.vm_name) whenFront.load();
      else {
        const hint = "Files and history are read from the project's VM when it is in front: press Open in front.";
        fill(tree, el("p.hint", {}, hint)); fill(log, el("li.hint", {}, hint));
      }
    }

    async function loadTree(path, box, fileBox, name) {
      let t;
      try { t = await get(`${path}/tree`); } catch (e) {
        if (e.status !== 409) notify(e.message, { error: true });
        return fill(box, el("p.hint", {}, `No file tree: ${e.message}`));
      }
      if (current !== name) return;
      // Nest the flat paths: folders (first) as <details>, files as buttons.
      const rootDir = { dirs: new Map(), files: [] };
      for (const f of t.files) {
        const parts = f.path.split("/");
        let dir = rootDir;
        for (const part of parts.slice(0, -1)) {
          if (!dir.dirs.has(part)) dir.dirs.set(part, { dirs: new Map(), files: [] });
          dir = dir.dirs.get(part);
        }
        dir.files.push({ ...f, name: parts.at(-1) });
      }
      const open = async (f) => {
        const file = await attempt(() => get(`${path}/file?path=${enc(f.path)}`));
        if (!file || current !== name) return;
        fill(fileBox, el("h3#project-file-path", {}, file.path, el("span.meta", {}, ` ${size(file.size)}`)),
          file.binary || file.text === null ? el("p.hint", {}, "A binary file: not shown.")
            : el("pre.v-code#project-file", { tabindex: "0" }, file.text),
          file.truncated ? el("p.hint", {}, "Only the beginning of the file is shown.") : null);
      };
      const small = t.files.length <= 40; // a small tree shows every folder open
      const list = (dir) => el("ul", {},
        [...dir.dirs].sort(([a], [b]) => a.localeCompare(b)).map(([n, sub]) =>
          el("li", {}, el("details", { open: small }, el("summary", {}, `${n}/`), list(sub)))),
        dir.files.sort((a, b) => a.name.localeCompare(b.name)).map((f) => el("li", {},
          el("button.v-file", { type: "button", dataset: { path: f.path }, onclick: () => open(f) }, f.name,
            el("span.meta", {}, ` ${size(f.size)}`)))));
      fill(box, el("p.meta", {}, `${t.branch ?? "(no branch)"} @ ${t.head ? t.head.slice(0, 8) : "(no commits)"} · `
        + `${t.files.length} files${t.truncated ? " (list cut short)" : ""}`),
        el("nav.v-tree", { "aria-label": "Files" }, list(rootDir)));
    }

    async function loadLog(path, box, diffBox, name) {
      let commits;
      try { commits = await get(`${path}/log?limit=50`); } catch (e) {
        if (e.status !== 409) notify(e.message, { error: true });
        return fill(box, el("li.hint", {}, `No history: ${e.message}`));
      }
      if (current !== name) return;
      const open = async (c, button) => {
        for (const b of box.querySelectorAll("button")) b.removeAttribute("aria-current");
        button.setAttribute("aria-current", "true");
        const d = await attempt(() => get(`${path}/commits/${enc(c.sha)}`));
        if (d && current === name) fill(diffBox, el("h3", {}, `${d.sha.slice(0, 8)} ${d.subject}`), diffView(d.diff, "project-diff"),
          d.truncated ? el("p.hint", {}, "The diff is cut short.") : null);
      };
      fill(box, commits.length ? commits.map((c) => el("li", {}, el("button.v-commit", {
        type: "button", dataset: { sha: c.sha }, onclick: (e) => open(c, e.currentTarget) },
      el("code", {}, c.sha.slice(0, 8)), " ", c.kind ? el(`span.v-badge.${c.kind}`, {}, c.kind) : null, " ", c.subject,
      el("span.meta", {}, ` — ${c.author}, ${when(c.date)}`)))) : el("li.hint", {}, "No commits yet."));
    }

    show(shell.path || null);
    return () => { current = undefined; whenFront = null; };
  },
};
