// Small DOM helpers every view shares: element building, the confirm dialog, the
// status line for errors, and formatting. No framework: views build DOM with el().

/** el("button.primary#send", {onclick, type: "submit", "aria-label": "Send"}, "Send") */
export function el(spec, attrs = {}, ...children) {
  const [, tag = "div", rest = ""] = spec.match(/^([a-z0-9-]*)(.*)$/i);
  const node = document.createElement(tag || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") node.classList.add(part.slice(1));
    else node.id = part.slice(1);
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false)
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

/** Ask before a destructive action: a modal <dialog> naming what will happen.
 *  Resolves true only when the user confirms. */
export function confirmAction(question, { action = "Delete" } = {}) {
  return new Promise((resolve) => {
    const dialog = el("dialog.confirm", { "aria-labelledby": "confirm-text" },
      el("p#confirm-text", {}, question),
      el("form.actions", { method: "dialog" },
        el("button.cancel", { value: "cancel", type: "submit" }, "Cancel"),
        el("button.danger", { value: "ok", type: "submit" }, action)));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "ok"); });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.cancel").focus();
  });
}

/** Show a one-line message in the status bar (errors in red); clears after a while. */
export function notify(message, { error = false } = {}) {
  const bar = document.getElementById("status-line");
  if (!bar) return;
  bar.textContent = String(message);
  bar.classList.toggle("error", error);
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { bar.textContent = ""; }, error ? 15000 : 5000);
}

/** Run an async action; an error becomes a one-line notice instead of an exception. */
export async function attempt(fn) {
  try { return await fn(); } catch (e) {
    if (e.name === "AbortError") return undefined;
    notify(e.message || String(e), { error: true });
    return undefined;
  }
}

export const mib = (n) => (n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${Math.round(n)} MiB`);
export const seconds = (s) => (s < 10 ? `${s.toFixed(2)} s` : s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s / 60)} min`);
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

/** A small SVG line chart of numbers (the dashboard's CPU and memory over time). */
export function sparkline(values, { width = 120, height = 28, label = "" } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.classList.add("sparkline");
  if (values.length > 1) {
    const max = Math.max(...values, 1e-9);
    const step = width / (values.length - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  return svg;
}
