// The Somnus web app's shell: login, the hash router that mounts one view at a time
// into <main id="view">, the subsystem switcher, the budget bar, tier chips and swap
// indicator, the one live /events stream, and the overlay. Views live in views/<id>.js.
//
// The contract every view relies on:
//
//   export default { id, title, subsystem /* "chat"|"research"|"projects"|"artifacts"|null */,
//                    mount(root, shell) }   // returns an unmount function, or nothing
//                                           // (or a Promise of either)
//
//   shell.status            the latest StatusView (orchestrator/views.py): {policy, foreground,
//                           budget_limit_mib, budget_used_mib, vms: [VMStatus], orphans};
//                           null until the first one arrives. Always current (a getter).
//   shell.path              the sub-path after the view id, decoded: "NAME" for
//                           #/projects/NAME, "" for #/projects. Any change of the hash
//                           (view or sub-path) unmounts the view and mounts it again.
//   shell.on(name, fn)      -> off(). Live events of the one /events stream: "status"
//                           (a whole StatusView; shell.status is already updated when fn
//                           runs), "lifecycle" {vm, event, detail, at}, "swap" (a ledger row
//                           {seq, from_vm, to_vm, phase, outcome, started_at, finished_at,
//                           detail}), "sample" {vm, at, metrics}, "vm_error" {vm, at, source,
//                           message}. fn gets the parsed data. A view's listeners are removed
//                           for it when it unmounts; calling off() earlier is fine.
//   shell.activate(ref)     -> Promise<ActivateView|null>. Brings a VM (name, or a subsystem
//                           with one VM) to the foreground: POST /vms/{ref}/activate, then
//                           follows the operation, showing progress and elapsed seconds in
//                           #swap-status. Resolves with the operation's result (ActivateView
//                           {vm, previous, path, seconds, seq, timings}); on any error it
//                           writes one line to the status line and resolves null. Two calls
//                           for the same ref while one runs share it.
//   shell.openOverlay(url, title)  a full-size <dialog id="overlay"> holding an <iframe> of
//                           url over the current view (which stays mounted, state intact);
//                           Close button and Esc close it.
//   shell.closeOverlay()
//   shell.navigate(hash)    go to a route, e.g. shell.navigate("#/projects/web").

import { ApiError, followOperation, get, post, setCsrf } from "./api.js";
import { el, fill, mib, notify } from "./ui.js";

const VIEWS = ["chat", "research", "projects", "sessions", "artifacts", "collab", "dashboard"];
const DEFAULT_ROUTE = "#/chat";
const EVENT_NAMES = ["status", "lifecycle", "swap", "sample", "vm_error"];

const $ = (id) => document.getElementById(id);
const listeners = new Map(); // event name -> Set of functions
const activations = new Map(); // ref -> Promise, so a double click does not swap twice
let currentStatus = null;
let events = null; // the EventSource of /events
let mounted = null; // {id, path, unmount, offs}
let routeToken = 0; // the latest navigation; older ones that finish late are dropped
let ownSwaps = 0; // our own activations or creations running: ledger events wait
const ownSeqs = new Set(); // ledger rows of our own swaps (their events come up to 1 s late)

// -- live events ---------------------------------------------------------------------------

function on(name, fn) {
  if (!listeners.has(name)) listeners.set(name, new Set());
  listeners.get(name).add(fn);
  return () => listeners.get(name)?.delete(fn);
}

function dispatch(name, data) {
  for (const fn of [...(listeners.get(name) || [])]) {
    try { fn(data); } catch (e) { console.error(`listener of '${name}' failed`, e); }
  }
}

function openEvents() {
  closeEvents();
  const source = new EventSource("/events");
  events = source;
  for (const name of EVENT_NAMES) {
    source.addEventListener(name, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      if (name === "status") setStatus(data);
      if (name === "swap") showLedgerSwap(data);
      if (name === "vm_error") notify(`${data.vm}: ${data.message}`, { error: true });
      dispatch(name, data);
    });
  }
  // EventSource reconnects by itself after a dropped connection; it gives up only when
  // the server refuses (an expired session answers 401), so then ask who we are.
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED || events !== source) return;
    setTimeout(async () => {
      if (events !== source) return;
      try {
        await get("/app/session");
        openEvents();
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) showLogin("Your session ended: log in again.");
        else setTimeout(() => events === source && openEvents(), 5000);
      }
    }, 1000);
  };
}

function closeEvents() {
  if (events) events.close();
  events = null;
}

// -- status: budget bar and tier chips -----------------------------------------------------

function setStatus(status) {
  currentStatus = status;
  const used = status.budget_used_mib || 0;
  const limit = status.budget_limit_mib || 0;
  const bar = $("budget-bar");
  const text = `${mib(used)} / ${mib(limit)}`;
  bar.setAttribute("aria-valuemax", String(limit));
  bar.setAttribute("aria-valuenow", String(Math.min(used, limit || used)));
  bar.setAttribute("aria-valuetext", text);
  const share = limit ? Math.min(1, used / limit) : 0;
  bar.querySelector(".fill").style.width = `${(share * 100).toFixed(1)}%`;
  bar.classList.toggle("high", share > 0.85);
  bar.querySelector(".value").textContent = text;

  fill($("tiers"), status.vms.map((vm) => {
    const front = vm.name === status.foreground;
    return el(`li.chip.tier-${vm.tier}`, { dataset: { vm: vm.name }, title: vm.subsystem },
      front ? el("span.star", { "aria-hidden": "true" }, "★ ") : null,
      el("strong", {}, vm.name), " ",
      el("span.meta", {}, `${vm.state} · ${vm.tier}${vm.resident_mib ? ` · ${mib(vm.resident_mib)}` : ""}`));
  }), status.orphans?.length
    ? el("li.chip.tier-error", { title: "domains no VM owns: somnus vm prune" }, `${status.orphans.length} orphan domain(s)`)
    : null);
}

async function refreshStatus() {
  try { setStatus(await get("/status")); dispatch("status", currentStatus); } catch { /* the stream sends it */ }
}

// -- the swap indicator --------------------------------------------------------------------

let swapTimer = null;

/** "switching to X… 1.2 s" ticking from `since` (performance.now() or epoch ms). */
function showSwitching(target, since, clock = () => performance.now(), verb = "switching to") {
  clearInterval(swapTimer);
  const box = $("swap-status");
  // The count is for the eye: a screen reader hears the start and the end, not each tick.
  const count = el("span.elapsed", { "aria-hidden": "true" }, "0.0 s");
  const line = el("span.line");
  const name = document.createTextNode(target);
  fill(box, el("span.busy", { "aria-hidden": "true" }), `${verb} `, name, "… ", count, line);
  box.classList.add("active");
  const tick = () => { count.textContent = `${((clock() - since) / 1000).toFixed(1)} s`; };
  tick();
  swapTimer = setInterval(tick, 100);
  return {
    line: (text) => { line.textContent = text ? ` — ${text}` : ""; },
    rename: (text) => { name.textContent = text; }, // a subsystem resolved to its VM
  };
}

function showSwapped(vm, secs, path) {
  clearInterval(swapTimer);
  const box = $("swap-status");
  box.classList.remove("active");
  const took = secs < 1 ? secs.toFixed(2) : secs.toFixed(1); // test-driver swaps take ms
  if (path === "already") fill(box, `${vm} already in front`);
  else fill(box, el("span", {}, `${vm} in front — swapped in ${took} s`, path ? el("span.meta", {}, ` (${path})`) : null));
}

function showSwapFailed(text) {
  clearInterval(swapTimer);
  const box = $("swap-status");
  box.classList.remove("active");
  fill(box, el("span.error", {}, text));
}

/** Server times may come without a zone (SQLite's naive UTC): read those as UTC. */
const epochMs = (iso) => Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);

/** A swap someone else started (the CLI, a collaboration): show it from the ledger. */
function showLedgerSwap(row) {
  if (ownSwaps || ownSeqs.has(row.seq)) return;
  if (row.outcome === "in_progress") showSwitching(row.to_vm, epochMs(row.started_at), Date.now);
  else if (row.outcome === "done" && row.finished_at)
    showSwapped(row.to_vm, (epochMs(row.finished_at) - epochMs(row.started_at)) / 1000);
  else if (row.outcome !== "done") showSwapFailed(`switch to ${row.to_vm} ${row.outcome.replace("_", " ")}${row.detail ? `: ${row.detail}` : ""}`);
}

/** Activate and follow; throws ApiError (the switcher wants the 404 itself). */
async function activateOrThrow(ref) {
  if (activations.has(ref)) return activations.get(ref);
  const run = (async () => {
    ownSwaps += 1;
    const started = performance.now();
    const shown = showSwitching(ref, started);
    try {
      const op = await post(`/vms/${encodeURIComponent(ref)}/activate`);
      if (op.target) shown.rename(op.target);
      const done = await followOperation(op.id, shown.line);
      const result = done.result || {};
      if (result.seq != null) ownSeqs.add(result.seq);
      showSwapped(result.vm || op.target || ref, result.seconds ?? (performance.now() - started) / 1000, result.path);
      await refreshStatus();
      return result;
    } catch (e) {
      showSwapFailed(`switch to ${ref} failed`);
      throw e;
    } finally {
      ownSwaps -= 1;
      activations.delete(ref);
    }
  })();
  activations.set(ref, run);
  return run;
}

async function activate(ref) {
  try { return await activateOrThrow(ref); } catch (e) {
    notify(e.message || String(e), { error: true });
    return null;
  }
}

/** The switcher: bring the subsystem's VM to the front unless it is there already. */
async function switchTo(subsystem) {
  const status = currentStatus;
  let ref = subsystem;
  if (status) {
    const front = status.vms.find((v) => v.name === status.foreground);
    if (front?.subsystem === subsystem) { showSwapped(front.name, 0, "already"); return; }
    const mine = status.vms.filter((v) => v.subsystem === subsystem)
      .sort((a, b) => String(b.last_active_at).localeCompare(String(a.last_active_at)));
    if (!mine.length) return offerCreate(subsystem);
    ref = mine[0].name; // by name: a subsystem with several VMs is ambiguous to the API
  }
  try { await activateOrThrow(ref); } catch (e) {
    if (e instanceof ApiError && e.status === 404) offerCreate(subsystem);
    else notify(e.message, { error: true });
  }
}

function offerCreate(subsystem) {
  clearInterval(swapTimer);
  const button = el("button#create-vm.small", { type: "button", onclick: () => createVM(subsystem) },
    `Create ${subsystem} VM`);
  fill($("swap-status"), `No ${subsystem} VM yet. `, button);
}

async function createVM(subsystem) {
  let created = false;
  ownSwaps += 1;
  const shown = showSwitching(subsystem, performance.now(), undefined, "creating");
  try {
    const op = await post("/vms", { name: subsystem, subsystem });
    await followOperation(op.id, shown.line);
    created = true;
  } catch (e) {
    showSwapFailed(`creating the ${subsystem} VM failed`);
    notify(e.message || String(e), { error: true });
  } finally {
    ownSwaps -= 1;
  }
  if (created) {
    notify(`Created the ${subsystem} VM.`);
    await activate(subsystem);
  }
}

// -- overlay -------------------------------------------------------------------------------

let overlayReturn = null;

function openOverlay(url, title = "") {
  const dialog = $("overlay");
  overlayReturn = document.activeElement;
  $("overlay-title").textContent = title;
  $("overlay-frame").title = title || "Overlay content";
  $("overlay-frame").src = url;
  if (!dialog.open) dialog.showModal();
  $("overlay-close").focus();
}

function closeOverlay() {
  const dialog = $("overlay");
  if (dialog.open) dialog.close();
}

// -- router --------------------------------------------------------------------------------

function parseHash() {
  const [id = "", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  let path = rest.join("/");
  try { path = rest.map(decodeURIComponent).join("/"); } catch { /* keep it raw */ }
  return { id, path };
}

function unmount() {
  if (!mounted) return;
  const { unmount: done, offs } = mounted;
  mounted = null;
  offs.forEach((off) => off());
  try { if (typeof done === "function") done(); } catch (e) { console.error("unmount failed", e); }
}

async function route() {
  const { id, path } = parseHash();
  if (!VIEWS.includes(id)) { location.replace(DEFAULT_ROUTE); return; }
  const token = ++routeToken;
  for (const link of document.querySelectorAll("#switcher a")) {
    if (link.dataset.view === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  unmount();
  const root = $("view");
  fill(root, el("p.loading", {}, "Loading…"));
  root.setAttribute("aria-busy", "true");
  let view;
  try {
    view = (await import(`./views/${id}.js`)).default;
  } catch (e) {
    if (token !== routeToken) return;
    root.removeAttribute("aria-busy");
    fill(root, el("h1", { tabIndex: -1 }, "View unavailable"), el("p.error", {}, `The ${id} view failed to load.`));
    notify(`${id} view: ${e.message || e}`, { error: true });
    root.querySelector("h1").focus();
    return;
  }
  if (token !== routeToken) return;
  fill(root);
  root.className = `view-${id}`;
  const offs = [];
  const scoped = {
    get status() { return currentStatus; },
    path,
    on(name, fn) { const off = on(name, fn); offs.push(off); return off; },
    activate, openOverlay, closeOverlay, navigate,
  };
  mounted = { id, path, unmount: null, offs };
  document.title = `${view.title || id} — Somnus`;
  let done;
  try {
    done = await view.mount(root, scoped);
  } catch (e) {
    notify(`${view.title || id}: ${e.message || e}`, { error: true });
    console.error(e);
  }
  root.removeAttribute("aria-busy");
  if (token !== routeToken || mounted?.offs !== offs) {
    offs.forEach((off) => off()); // navigated away while it mounted
    if (typeof done === "function") done();
    return;
  }
  mounted.unmount = done;
  const heading = root.querySelector("h1, h2");
  const target = heading || root;
  if (heading && !heading.hasAttribute("tabindex")) heading.tabIndex = -1;
  target.focus({ preventScroll: true });
}

function navigate(hash) {
  location.hash = hash.startsWith("#") ? hash : `#${hash}`;
}

// -- login ---------------------------------------------------------------------------------

function showApp(visible) {
  $("login").hidden = visible;
  for (const id of ["switcher", "fleet", "view", "logout"]) $(id).hidden = !visible;
}

function showLogin(message = "") {
  closeEvents();
  unmount();
  closeOverlay();
  setCsrf(null);
  currentStatus = null;
  fill($("view"));
  showApp(false);
  document.title = "Log in — Somnus";
  $("login-error").textContent = message;
  $("login-token").focus();
}

async function startApp(session) {
  if (!session?.csrf) { showLogin(); return; } // a server that answers "no session" with 200
  setCsrf(session.csrf);
  showApp(true);
  openEvents();
  refreshStatus(); // the stream sends it on connect too; this covers a slow stream
  if (!location.hash || location.hash === "#") location.replace(DEFAULT_ROUTE);
  await route();
}

async function login(event) {
  event.preventDefault();
  const input = $("login-token");
  const button = $("login-submit");
  const error = $("login-error");
  error.textContent = "";
  button.disabled = true;
  try {
    const session = await post("/app/login", { token: input.value.trim() });
    input.value = "";
    await startApp(session);
  } catch (e) {
    error.textContent = e instanceof ApiError && e.status === 401
      ? "That is the wrong token: 'somnus api token' prints the right one." : `Login failed: ${e.message || e}`;
    input.select();
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  try { await post("/app/logout"); } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) { notify(e.message, { error: true }); return; }
  }
  showLogin();
  notify("Logged out.");
}

// -- start ---------------------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  // The skip link must not touch the hash: the router owns it.
  document.querySelector(".skip").addEventListener("click", (e) => { e.preventDefault(); $("view").focus(); });
  $("overlay-close").addEventListener("click", closeOverlay);
  $("overlay").addEventListener("close", () => {
    $("overlay-frame").src = "about:blank"; // stop what ran inside
    if (overlayReturn?.isConnected) overlayReturn.focus();
    overlayReturn = null;
  });
  for (const link of document.querySelectorAll("#switcher a[data-subsystem]")) {
    link.addEventListener("click", () => switchTo(link.dataset.subsystem));
  }
  window.addEventListener("hashchange", () => { if (!$("view").hidden) route(); });
}

async function start() {
  wire();
  try {
    await startApp(await get("/app/session"));
  } catch (e) {
    showLogin(e instanceof ApiError && e.status === 401 ? "" : `Cannot reach the server: ${e.message || e}`);
  }
}

start();
