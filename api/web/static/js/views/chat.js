// Chat view: one conversation per VM (picked in a select, defaulting to the foreground),
// answers streamed token by token from POST /vms/{vm}/chat, with Stop, Regenerate,
// Copy, a per-answer prompt report (layers, cuts, memories) and "Remember this".
// Each VM's transcript lives in sessionStorage, so leaving the view keeps it.

import { ApiError, postStream, post } from "../api.js";
import { el, fill, notify, attempt } from "../ui.js";

const KEY = (vm) => `somnus.chat.${vm}`;
const WAIT_LIMIT_S = 600; // how long a busy agent is waited for before the error shows

/** Resolve after ms, or reject with an AbortError when signal aborts (Stop). */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("stopped", "AbortError"));
    }, { once: true });
  });
}

function load(vm) {
  try { return JSON.parse(sessionStorage.getItem(KEY(vm))) || []; } catch { return []; }
}

function save(vm, messages) {
  try { sessionStorage.setItem(KEY(vm), JSON.stringify(messages)); } catch { /* storage full: keep it in memory */ }
}

/** The VM to talk to by default: the foreground, else the chat VM, else any. */
function defaultVM(status) {
  const vms = status?.vms || [];
  const pick = vms.find((v) => v.name === status.foreground) || vms.find((v) => v.subsystem === "chat") || vms[0];
  return pick?.name || "";
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain HTTP on another host, or denied): the old way.
    const area = el("textarea", { value: text, readonly: true, "aria-hidden": "true" });
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) throw new Error("copy refused by the browser");
  }
  notify("Copied.");
}

function report(answer) {
  const r = answer.report;
  if (!r) return null;
  const cw = r.context_window || {};
  const layers = r.layers || [];
  const cuts = r.truncated || [];
  const memories = r.memories_used || [];
  return el("details.report", {},
    el("summary", {}, "Prompt report"),
    el("p", {}, `${cw.current_tokens ?? "?"} of ${cw.max_tokens ?? "?"} context tokens`,
      cw.utilization_percent != null ? ` (${cw.utilization_percent.toFixed(1)} %)` : "",
      ` · strategy ${r.strategy}${r.role ? `, role ${r.role}` : ""}`,
      answer.usage ? ` · ${answer.usage.prompt_tokens} prompt + ${answer.usage.completion_tokens} answer tokens` : "",
      answer.timings ? ` · ${answer.timings.predicted_per_second.toFixed(1)} tokens/s` : ""),
    layers.length
      ? el("table", {}, el("caption", {}, "Tokens per prompt layer"),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Layer"), el("th", { scope: "col" }, "Tokens"), el("th", { scope: "col" }, "Items"))),
        el("tbody", {}, layers.map((l) => el("tr", {}, el("td", {}, l.layer ?? l.name), el("td.num", {}, l.tokens), el("td.num", {}, l.items ?? "")))))
      : el("p", {}, "No layer figures."),
    el("h3", {}, "Cut to fit"),
    cuts.length
      ? el("ul", {}, cuts.map((c) => el("li", {}, `${c.layer}: ${c.items_dropped} dropped, ${c.items_shortened} shortened, ${c.tokens_removed} tokens removed — ${c.reason}`)))
      : el("p", {}, "Nothing was cut."),
    el("h3", {}, "Memories retrieved"),
    memories.length ? el("ul", {}, memories.map((m) => el("li", {}, m))) : el("p", {}, "None."),
    r.screening?.length
      ? el("p.warn", {}, `Flagged prompt content: ${r.screening.map((s) => `${s.source} (${s.threat})`).join(", ")}`)
      : null);
}

export default {
  id: "chat",
  title: "Chat",
  subsystem: "chat",
  mount(root, shell) {
    let vm = defaultVM(shell.status);
    let messages = vm ? load(vm) : [];
    let controller = null; // the running request's, for Stop
    // Until the user picks a VM or sends, the select follows the foreground: the Chat
    // button mounts this view while it is still bringing the chat VM forward.
    let following = true;

    const select = el("select#chat-vm", { onchange: () => { following = false; use(select.value); } });
    const log = el("div#chat-log.transcript", { role: "log", "aria-live": "polite", "aria-label": "Conversation" });
    const input = el("textarea#chat-input", { rows: 3, placeholder: "Ask… (Enter sends, Shift+Enter for a new line)" });
    const maxTokens = el("input#chat-max-tokens", { type: "number", min: 1, max: 32768, step: 1, inputMode: "numeric", placeholder: "default" });
    const send = el("button#chat-send.primary", { type: "submit" }, "Send");
    const stop = el("button#chat-stop", { type: "button", disabled: true, onclick: () => controller?.abort() }, "Stop");
    const again = el("button#chat-regenerate", { type: "button", onclick: regenerate }, "Regenerate");
    const fresh = el("button#chat-new", { type: "button", onclick: newConversation }, "New conversation");
    const empty = el("p#chat-empty.hint");

    function use(name) {
      vm = name;
      messages = vm ? load(vm) : [];
      render();
    }

    function options() {
      const vms = shell.status?.vms || [];
      const gone = !vms.some((v) => v.name === vm);
      if (shell.status && !controller && (gone || following)) {
        const next = defaultVM(shell.status);
        if (next !== vm) use(next);
      }
      fill(select, vms.map((v) => el("option", { value: v.name, selected: v.name === vm },
        `${v.name} (${v.subsystem}${v.name === shell.status.foreground ? ", in front" : `, ${v.state}`})`)));
      empty.textContent = vms.length || !shell.status ? "" : "No VMs yet: the Chat button above offers to create the chat VM.";
      empty.hidden = !empty.textContent;
      busy(!!controller);
    }

    function busy(on) {
      const none = !vm;
      // For bench.app: when the chat box first became usable (ms after navigation).
      if (!none && !on && window.__somnusChatReady === undefined) window.__somnusChatReady = performance.now();
      send.disabled = on || none;
      select.disabled = on;
      stop.disabled = !on;
      again.disabled = on || none || !messages.some((m) => m.role === "user");
      fresh.disabled = on || none;
    }

    const questionNode = (m, i) => el("div.message.question", { dataset: { index: i } }, el("h2.who", {}, "You"), el("div.text", {}, m.text));

    /** An answer's node; a streaming one grows through `text` and gets its badges,
     *  buttons and report from finish() (in place: tests and readers keep the node). */
    function answerNode(answer, index) {
      const text = document.createTextNode(answer.text);
      const extras = el("div.extras");
      const node = el("article.message.answer", { dataset: { index } },
        el("h2.who", {}, vm || "answer"), el("div.text", {}, text), extras);
      const finish = () => fill(extras,
        answer.stopped ? el("p.badge.stopped", {}, "stopped") : null,
        answer.error ? el("p.error", {}, answer.error) : null,
        el("div.actions", {},
          el("button.small.copy", { type: "button", onclick: () => attempt(() => copy(answer.text)) }, "Copy"),
          el("button.small.remember", { type: "button", onclick: () => remember(answer) }, "Remember this")),
        report(answer));
      return { node, text, finish };
    }

    function render() {
      fill(log, messages.map((m, i) => {
        if (m.role === "user") return questionNode(m, i);
        const a = answerNode(m, i);
        a.finish();
        return a.node;
      }));
      log.scrollTop = log.scrollHeight;
      busy(!!controller);
    }

    async function ask(message) {
      const target = vm;
      const isNew = messages.length === 0; // the agent's conversation matches what is shown
      const question = { role: "user", text: message };
      const answer = { role: "assistant", text: "" };
      messages.push(question, answer);
      save(target, messages);
      const { node, text, finish } = answerNode(answer, messages.length - 1);
      node.setAttribute("aria-busy", "true");
      log.append(questionNode(question, messages.length - 2), node);
      log.scrollTop = log.scrollHeight;
      // For bench.app: when this answer was asked, and when each token reached the
      // screen (stamped in the animation frame after it was appended).
      window.__somnusSendTime = performance.now();
      const times = (window.__somnusTokenTimes = []);
      let count = 0;
      let unstamped = [];
      const painted = () => {
        const t = performance.now();
        for (const n of unstamped) times.push({ t, n });
        unstamped = [];
      };
      const body = { message, stream: true, new: isNew };
      const limit = parseInt(maxTokens.value, 10);
      if (limit > 0) body.max_tokens = limit;
      controller = new AbortController();
      busy(true);
      const onEvent = (name, data) => {
          if (name === "error") { answer.error = `${data.error}: ${data.detail}`; return; }
          if (!data) return; // [DONE]
          const piece = data.choices?.[0]?.delta?.content;
          if (piece) {
            text.appendData(piece);
            answer.text += piece;
            unstamped.push(count++);
            if (unstamped.length === 1) requestAnimationFrame(painted);
            if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
          }
          if (data.somnus) answer.report = data.somnus;
          if (data.usage) answer.usage = data.usage;
          if (data.timings) answer.timings = data.timings;
      };
      try {
        // A busy agent (its model still loading, another answer running) says when to come
        // back: wait and ask again, as a person would, until Stop or WAIT_LIMIT_S.
        const waitUntil = performance.now() + WAIT_LIMIT_S * 1000;
        for (;;) {
          try {
            await postStream(`/vms/${encodeURIComponent(target)}/chat`, body, onEvent,
              { signal: controller.signal });
            break;
          } catch (e) {
            if (!(e instanceof ApiError) || e.retryAfter === null || performance.now() > waitUntil) throw e;
            node.dataset.waiting = e.detail;
            notify(`${target}: ${e.detail}`);
            await pause(Math.max(1, e.retryAfter) * 1000, controller.signal);
          }
        }
        delete node.dataset.waiting;
      } catch (e) {
        if (e.name === "AbortError") answer.stopped = true;
        else { answer.error = e.message || String(e); notify(answer.error, { error: true }); }
      } finally {
        controller = null;
        save(target, messages);
        // The last tokens' frame first (a hidden tab has no frames: then 100 ms).
        await new Promise((done) => { requestAnimationFrame(done); setTimeout(done, 100); });
        painted();
        node.removeAttribute("aria-busy");
        finish();
        busy(false);
      }
    }

    function submit(event) {
      event.preventDefault();
      const message = input.value.trim();
      if (!message || controller || !vm) return;
      input.value = "";
      following = false;
      ask(message);
    }

    function regenerate() {
      const last = messages.map((m) => m.role).lastIndexOf("user");
      if (last < 0 || controller) return;
      following = false;
      const { text } = messages[last];
      messages = messages.slice(0, last); // drop the question and its answer: ask() adds them again
      render();
      ask(text);
    }

    function newConversation() {
      messages = [];
      save(vm, messages);
      render();
      input.focus();
      notify("New conversation: the next message starts it.");
    }

    async function remember(answer) {
      if (!answer.text.trim()) { notify("Nothing to remember in an empty answer.", { error: true }); return; }
      const body = { content: answer.text.trim(), memory_type: "core_fact", importance: "high", tags: ["pinned"] };
      if (answer.report?.conversation_id) body.conversation_id = answer.report.conversation_id;
      await attempt(async () => {
        const added = await post(`/vms/${encodeURIComponent(vm)}/memory`, body);
        notify(added.deduplicated ? "Already remembered." : `Remembered on ${vm}.`);
      });
    }

    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
    });
    const form = el("form.composer", { onsubmit: submit },
      el("label", { for: "chat-input" }, "Message"), input,
      el("div.controls", {},
        send, stop, again, fresh,
        el("label.inline", { for: "chat-max-tokens" }, "Max tokens"), maxTokens));

    fill(root,
      el("div.view-head", {}, el("h1", {}, "Chat"),
        el("div.picker", {}, el("label", { for: "chat-vm" }, "VM"), select)),
      empty, log, form);
    options();
    render();
    const off = shell.on("status", options);
    return () => { off(); controller?.abort(); };
  },
};
