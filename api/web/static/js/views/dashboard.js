// Dashboard view: every VM (state, tier, uptime, memory, CPU and memory sparklines,
// security, errors) with its actions, the swap ledger, recent security events and a
// live event log. Loaded once, then kept current from the shell's /events stream.

import { get, post, del, followOperation } from "../api.js";
import { el, fill, notify, attempt, confirmAction, mib, when, sparkline } from "../ui.js";

const SERIES = 60; // samples kept per VM and metric
const LOG_SIZE = 20;

function uptime(s) {
  if (s == null) return "—";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const epochMs = (iso) => Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
const th = (...names) => el("thead", {}, el("tr", {}, names.map((n) => el("th", { scope: "col" }, n))));

/** Ask for a snapshot's name and description; resolves {name, description} or null. */
function askSnapshot(vm) {
  return new Promise((resolve) => {
    const stamp = new Date().toISOString().replace(/\D/g, "").slice(0, 14);
    const name = el("input#snap-name", { required: true, value: `snap-${stamp}`, pattern: "[a-z][a-z0-9\\-]{0,30}[a-z0-9]", maxLength: 32 });
    const description = el("input#snap-desc", { maxLength: 500 });
    const dialog = el("dialog.confirm", { "aria-labelledby": "snap-title" },
      el("form", { method: "dialog" },
        el("h2#snap-title", {}, `Snapshot ${vm}`),
        el("label", { for: "snap-name" }, "Name (lowercase letters, digits, hyphens)"), name,
        el("label", { for: "snap-desc" }, "Description (optional)"), description,
        el("div.actions", {},
          el("button.cancel", { value: "cancel", type: "submit", formNoValidate: true }, "Cancel"),
          el("button.primary", { value: "ok", type: "submit" }, "Take snapshot"))));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "ok" ? { name: name.value.trim(), description: description.value } : null);
    });
    document.body.append(dialog);
    dialog.showModal();
    name.select();
  });
}

export default {
  id: "dashboard",
  title: "Dashboard",
  subsystem: null,
  mount(root, shell) {
    const rows = new Map(); // VM name -> {tr, cells}
    const series = new Map(); // VM name -> {cpu: [], mem: []}
    let fleet = null; // FleetView, with when it was read (for ticking uptimes)
    let fleetAt = 0;
    let reloadTimer = null;

    const summary = el("p#fleet-summary.summary", { "aria-live": "polite" });
    const body = el("tbody");
    const table = el("table#vm-table", {}, el("caption", {}, "Virtual machines"),
      th("Name", "Subsystem", "State", "Tier", "Uptime", "Resident", "CPU", "Memory", "Security", "Errors", "Actions"), body);
    const swaps = el("tbody");
    const secEvents = el("tbody");
    const log = el("ol#event-log.event-log", { "aria-label": "Live events", role: "log", "aria-live": "polite" });

    const metricsOf = (vm) => series.get(vm) || series.set(vm, { cpu: [], mem: [] }).get(vm);

    function drawSparks(name) {
      const row = rows.get(name);
      if (!row) return;
      const { cpu, mem } = metricsOf(name);
      fill(row.cells.cpu, sparkline(cpu, { width: 64, label: `${name} CPU over time` }), el("span.num", {}, cpu.length ? `${cpu.at(-1).toFixed(0)} %` : "—"));
      fill(row.cells.mem, sparkline(mem, { width: 64, label: `${name} memory over time` }), el("span.num", {}, mem.length ? mib(mem.at(-1)) : "—"));
    }

    function addSample(name, metrics) {
      const s = metricsOf(name);
      if (metrics.cpu_percent != null) s.cpu = [...s.cpu, metrics.cpu_percent].slice(-SERIES);
      if (metrics.rss_mib != null) s.mem = [...s.mem, metrics.rss_mib].slice(-SERIES);
    }

    async function act(label, fn) {
      notify(`${label}…`);
      await attempt(async () => notify(await fn()));
    }

    function actions(name) {
      const enc = encodeURIComponent(name);
      const b = (cls, text, fn) => el(`button.small.${cls}`, { type: "button", "aria-label": `${text} ${name}`, onclick: fn }, text);
      return el("div.actions", {},
        b("start", "Start", () => act(`Starting ${name}`, async () => {
          const op = await post(`/vms/${enc}/start`, {});
          await followOperation(op.id, (line) => notify(`${name}: ${line}`));
          return `${name} started.`;
        })),
        b("stop", "Stop", async () => {
          if (!await confirmAction(`Stop ${name}? Its guest is shut down (powered off if it does not answer in time).`, { action: "Stop" })) return;
          act(`Stopping ${name}`, async () => ((await post(`/vms/${enc}/stop`, {})).clean ? `${name} stopped.` : `${name} powered off (no clean shutdown).`));
        }),
        b("activate", "Activate", () => shell.activate(name)),
        b("snapshot", "Snapshot", async () => {
          const snap = await askSnapshot(name);
          if (snap) act(`Snapshotting ${name}`, async () => `Snapshot ${(await post(`/vms/${enc}/snapshots`, snap)).name} of ${name} taken.`);
        }),
        b("delete.danger", "Delete", async () => {
          if (!await confirmAction(`Delete VM ${name}? Its domain, disk, snapshots and record are removed for good.`, { action: "Delete" })) return;
          act(`Deleting ${name}`, async () => { await del(`/vms/${enc}`); reload(); return `${name} deleted.`; });
        }));
    }

    function errorsCell(vm) {
      if (!vm.error_count) return "0";
      const list = el("ul.errors");
      const details = el("details", {}, el("summary", {}, `${vm.error_count}`), list);
      details.addEventListener("toggle", () => {
        if (details.open) attempt(async () => {
          const errors = await get(`/vms/${encodeURIComponent(vm.name)}/errors`);
          fill(list, errors.slice(0, 5).map((e) => el("li", {}, el("time", {}, when(e.at)), ` ${e.source}: ${e.message}`)));
        });
      });
      return details;
    }

    function build(securities) {
      const sec = new Map(securities.map((s) => [s.name, s]));
      rows.clear();
      fill(body, fleet.vms.map((vm) => {
        const cell = (cls) => el(`td.${cls}`);
        const cells = { state: cell("state"), tier: cell("tier"), uptime: cell("uptime"), resident: cell("resident"), cpu: cell("cpu"), mem: cell("mem") };
        const s = sec.get(vm.name);
        const level = s?.status || vm.security;
        const tr = el("tr", { dataset: { vm: vm.name } },
          el("th", { scope: "row" }, vm.name), el("td", {}, vm.subsystem),
          cells.state, cells.tier, cells.uptime, cells.resident, cells.cpu, cells.mem,
          el("td.security", { title: s?.hold || "" }, el(`span.badge.level-${level}`, {}, level), s?.hold ? ` ${s.hold}` : ""),
          el("td.errors", { title: vm.last_error || "" }, errorsCell(vm)),
          el("td", {}, actions(vm.name)));
        rows.set(vm.name, { tr, cells, vm });
        drawSparks(vm.name);
        return tr;
      }));
      if (!fleet.vms.length) body.append(el("tr", {}, el("td", { colSpan: 11 }, "No VMs yet.")));
      const counts = Object.entries(fleet.counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ");
      summary.textContent = `${fleet.total} VM${fleet.total === 1 ? "" : "s"}${counts ? ` (${counts})` : ""}`
        + ` · average uptime ${uptime(fleet.average_uptime_s)} · security ${fleet.security.status}`
        + (fleet.security.issues.length ? `: ${fleet.security.issues.join("; ")}` : "");
      update(shell.status);
    }

    /** State, tier, resident memory from a StatusView; uptimes tick from the fleet read. */
    function update(status) {
      const live = new Map((status?.vms || []).map((v) => [v.name, v]));
      for (const [name, row] of rows) {
        const v = live.get(name) || row.vm;
        row.cells.state.textContent = v.state;
        row.cells.state.className = `state state-${v.state}`;
        row.cells.tier.textContent = `${v.name === status?.foreground ? "★ " : ""}${v.tier}`;
        row.cells.resident.textContent = v.resident_mib != null ? mib(v.resident_mib) : "—";
        const up = v.state === "running" && row.vm.uptime_s != null ? row.vm.uptime_s + (Date.now() - fleetAt) / 1000 : null;
        row.cells.uptime.textContent = uptime(up);
      }
    }

    async function reload() {
      await attempt(async () => {
        const [f, securities] = await Promise.all([get("/vms"), get("/security").catch(() => [])]);
        fleet = f;
        fleetAt = Date.now();
        await Promise.all(f.vms.filter((v) => !series.has(v.name)).map(async (v) => {
          const samples = await get(`/security/vms/${encodeURIComponent(v.name)}/samples?limit=${SERIES}`).catch(() => []);
          samples.sort((a, b) => a.at - b.at).forEach((x) => addSample(v.name, x.metrics || {}));
        }));
        build(securities);
      });
    }

    const reloadSoon = () => { clearTimeout(reloadTimer); reloadTimer = setTimeout(reload, 800); };

    function swapRow(r) {
      const took = r.finished_at ? (epochMs(r.finished_at) - epochMs(r.started_at)) / 1000 : null;
      const secs = took == null ? "…" : `${took.toFixed(took < 1 ? 2 : 1)} s`;
      return el("tr", { dataset: { seq: r.seq } }, el("td.num", {}, r.seq), el("td", {}, `${r.from_vm ?? "—"} → ${r.to_vm}`),
        el("td", {}, r.phase), el(`td.outcome-${r.outcome}`, {}, r.outcome), el("td.num", {}, secs), el("td", {}, when(r.started_at)), el("td", {}, r.detail || ""));
    }

    function upsertSwap(r) {
      const old = swaps.querySelector(`tr[data-seq="${Number(r.seq)}"]`);
      if (old) old.replaceWith(swapRow(r));
      else { swaps.prepend(swapRow(r)); while (swaps.rows.length > 20) swaps.lastElementChild.remove(); }
    }

    function logEvent(text) {
      log.querySelector(".placeholder")?.remove();
      log.prepend(el("li", {}, el("time", {}, new Date().toLocaleTimeString()), " ", text));
      while (log.children.length > LOG_SIZE) log.lastElementChild.remove();
    }

    fill(root,
      el("div.view-head", {}, el("h1", {}, "Dashboard"), el("button#dash-refresh", { type: "button", onclick: reload }, "Refresh")),
      summary, el("div.scroll", {}, table),
      el("div.columns", {},
        el("section", { "aria-labelledby": "log-h" }, el("h2#log-h", {}, "Live events"), log),
        el("section", { "aria-labelledby": "swaps-h" }, el("h2#swaps-h", {}, "Swap ledger"),
          el("div.scroll", {}, el("table#swap-ledger", {}, th("#", "Swap", "Phase", "Outcome", "Took", "Started", "Detail"), swaps)))),
      el("section", { "aria-labelledby": "sec-h" }, el("h2#sec-h", {}, "Recent security events"),
        el("div.scroll", {}, el("table#security-events", {}, th("When", "VM", "Level", "Kind", "What", "Action"), secEvents))));

    log.append(el("li.placeholder.meta", {}, "Lifecycle events and swaps appear here as they happen."));
    reload();
    attempt(async () => { (await get("/swaps?limit=20")).forEach((r) => swaps.append(swapRow(r))); });
    attempt(async () => {
      fill(secEvents, (await get("/security/events?limit=20")).map((e) => el("tr", {},
        el("td", {}, when(e.at)), el("td", {}, e.vm_name), el("td", {}, el(`span.badge.level-${e.level}`, {}, e.level)),
        el("td", {}, e.kind), el("td", {}, [e.rule, e.detail].filter(Boolean).join(": ")), el("td", {}, e.action || ""))));
      if (!secEvents.rows.length) secEvents.append(el("tr", {}, el("td", { colSpan: 6 }, "No security events.")));
    });

    shell.on("status", (status) => {
      // A VM came or went, or one started or stopped (its uptime is the fleet read's): read again.
      const shape = (vms) => vms.map((v) => `${v.name}:${v.state === "running"}`).sort().join();
      if (fleet && shape(status.vms) !== shape([...rows.values()].map((r) => r.vm))) reloadSoon();
      update(status);
    });
    shell.on("lifecycle", (e) => { logEvent(`${e.vm ?? e.domain}: ${e.event}${e.detail ? ` (${e.detail})` : ""}`); reloadSoon(); });
    shell.on("swap", (r) => { upsertSwap(r); logEvent(`swap #${r.seq} ${r.from_vm ?? "—"} → ${r.to_vm}: ${r.outcome} (${r.phase})`); });
    shell.on("sample", (s) => { addSample(s.vm, s.metrics || {}); drawSparks(s.vm); });
    shell.on("vm_error", reloadSoon);
    const ticker = setInterval(() => update(shell.status), 5000);
    return () => { clearInterval(ticker); clearTimeout(reloadTimer); };
  },
};
