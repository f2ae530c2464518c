// The page's one way to talk to the Somnus API: same-origin fetch with the session
// cookie, the CSRF header on every state-changing request, one-line errors, and
// server-sent events (GET streams through EventSource, POST streams through fetch).

let csrf = null;

/** An API failure: the server's one-line {error, detail} body, or the network's. */
export class ApiError extends Error {
  constructor(status, error, detail, retryAfter = null) {
    super(detail ? `${error}: ${detail}` : error);
    this.status = status;
    this.error = error;
    this.detail = detail;
    this.retryAfter = retryAfter; // seconds, when the server says when to try again (503)
  }
}

export function setCsrf(token) { csrf = token; }

function headers(method, extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (method !== "GET" && method !== "HEAD" && csrf) h["X-CSRF-Token"] = csrf;
  return h;
}

async function failure(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON */ }
  const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? "");
  const retry = parseInt(response.headers.get("retry-after") ?? "", 10);
  return new ApiError(response.status, body.error || response.statusText, detail,
    Number.isFinite(retry) ? retry : null);
}

/** JSON request; returns the parsed body (null for 204). Throws ApiError. */
export async function request(method, path, body = undefined, { signal } = {}) {
  const init = { method, credentials: "same-origin", headers: headers(method), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body = {}, opts) => request("POST", path, body, opts);
export const put = (path, body, opts) => request("PUT", path, body, opts);
export const del = (path, opts) => request("DELETE", path, undefined, opts);

/** Follow an operation (a 202 answer's {id}) until it ends; onLine gets each progress
 *  line. Resolves with the final OperationView; rejects with ApiError if it failed. */
export function followOperation(opId, onLine = () => {}) {
  return new Promise((resolve, reject) => {
    const source = new EventSource(`/operations/${encodeURIComponent(opId)}/events`);
    source.addEventListener("progress", (e) => onLine(JSON.parse(e.data).line));
    for (const end of ["succeeded", "failed"]) {
      source.addEventListener(end, (e) => {
        source.close();
        const view = JSON.parse(e.data);
        if (end === "succeeded") resolve(view);
        else reject(new ApiError(409, view.error?.error || "failed", view.error?.detail || ""));
      });
    }
    source.onerror = () => { if (source.readyState === EventSource.CLOSED) reject(new ApiError(0, "connection lost", "")); };
  });
}

/** Subscribe to a GET event stream. handlers maps event names ("message" for unnamed)
 *  to functions of the parsed data; returns a function that closes the stream. */
export function subscribe(path, handlers) {
  const source = new EventSource(path);
  for (const [name, fn] of Object.entries(handlers)) {
    // The browser's own "error" (a dropped connection, retried by EventSource) has no data.
    source.addEventListener(name, (e) => {
      if (e.data === undefined) return;
      fn(e.data === "[DONE]" ? null : JSON.parse(e.data), e);
    });
  }
  return () => source.close();
}

/** POST a request whose answer is an event stream (chat, artifact runs, project tests).
 *  onEvent(name, data) gets each event ("message" when unnamed; data parsed as JSON,
 *  null for [DONE]). Abort with signal (the Stop button). Resolves when the stream ends. */
export async function postStream(path, body, onEvent, { signal } = {}) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin", signal,
    headers: headers("POST", { "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue; // a keepalive comment
      const text = data.join("\n");
      onEvent(name, text === "[DONE]" ? null : JSON.parse(text));
    }
  }
}
