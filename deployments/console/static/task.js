// The task page, "the agent's computer": the event stream (SSE, resumed with Last-Event-ID by
// the browser) feeds the timeline; after each burst of events the task's state, as the
// server's reducer derives it, redraws the plan graph, verdicts, artifacts and actions.
"use strict";

(() => {
  const { api, el } = window.troupe;
  const root = document.getElementById("task");
  if (!root) return;
  const taskId = root.dataset.taskId;
  const member = root.dataset.member === "true";
  const base = `/v1/tasks/${encodeURIComponent(taskId)}`;
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  const EVENT_TYPES = ["task.submitted", "task.status", "task.dispatched", "task.cancel_requested",
    "message.received", "plan.set", "node.started", "tool.called", "tool.result", "node.retry", "node.done",
    "node.failed", "verify.verdicts", "artifact.published", "llm.called", "requirements.pinned",
    "budget.raised", "plan.corrected", "agent.step", "iteration.started", "attachments.ingested"];

  const $ = (id) => document.getElementById(id);
  const timeline = $("timeline");
  const streamState = $("stream-state");
  let lastSeq = 0;
  let state = null;
  let source = null;
  let refreshTimer = null;
  let replayAt = null; // the seq the replay slider shows, or null for the present
  const seen = []; // {seq, type, ts} of every event received, for the replay's labels

  // -- the event stream -------------------------------------------------------------------

  function connect() {
    if (source) source.close();
    source = new EventSource(`${base}/events${lastSeq ? `?after=${lastSeq}` : ""}`);
    source.onopen = () => { streamState.textContent = "live"; };
    source.onerror = () => {
      // The browser reconnects by itself with Last-Event-ID; a finished task's stream just ends.
      if (state && TERMINAL.has(state.status) && state.last_seq <= lastSeq) { stop(); return; }
      streamState.textContent = "reconnecting…";
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  }

  function stop() {
    if (source) { source.close(); source = null; }
    streamState.textContent = `ended · ${timeline.children.length} events`;
  }

  function onEvent(msg) {
    const event = JSON.parse(msg.data);
    if (event.seq <= lastSeq) return;
    lastSeq = event.seq;
    seen.push({ seq: event.seq, type: event.type, ts: event.ts });
    timeline.append(renderEvent(event));
    scheduleRefresh();
  }

  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => { refreshTimer = null; await refresh(); }, 200);
  }

  async function refresh() {
    try {
      state = await api(base);
    } catch (e) {
      streamState.textContent = `could not read the task: ${e.message}`;
      return;
    }
    if (replayAt === null) render(state);
    if (TERMINAL.has(state.status) && state.last_seq <= lastSeq && source) stop();
    if (TERMINAL.has(state.status) && state.last_seq <= lastSeq) offerReplay();
  }

  // -- replay: the state after any event of a finished task's log --------------------------
  // The server folds the first N events with the same reducer that drives the task, so what
  // the slider shows is what the task was, not a reconstruction in the page.

  const slider = $("replay-at");
  let replayTimer = null;

  function offerReplay() {
    const box = $("replay");
    if (!box.hidden && +slider.max === lastSeq) return;
    slider.max = String(lastSeq);
    if (replayAt === null) slider.value = String(lastSeq);
    box.hidden = false;
    describeReplay(+slider.value);
  }

  function describeReplay(seq) {
    const e = seen.find((x) => x.seq === seq);
    $("replay-pos").textContent = `Event ${seq} of ${lastSeq}${e ? ` · ${e.type} · ${new Date(e.ts).toLocaleTimeString()}` : ""}`
      + (seq === lastSeq ? " (the end)" : "");
    $("replay-end").hidden = seq === lastSeq;
  }

  slider.addEventListener("input", () => {
    describeReplay(+slider.value);
    clearTimeout(replayTimer);
    replayTimer = setTimeout(() => showAt(+slider.value), 120);
  });
  $("replay-end").addEventListener("click", () => { slider.value = String(lastSeq); showAt(lastSeq); slider.focus(); });

  async function showAt(seq) {
    describeReplay(seq);
    if (seq >= lastSeq) {
      replayAt = null;
      root.dataset.replay = "";
      for (const li of timeline.children) li.classList.remove("future");
      if (state) render(state);
      return;
    }
    let at;
    try {
      at = await api(`/console/tasks/${encodeURIComponent(taskId)}/replay/${seq}`);
    } catch (e) {
      $("replay-pos").textContent = `could not replay: ${e.message}`;
      return;
    }
    if (+slider.value !== seq) return; // the slider moved on while this was loading
    replayAt = seq;
    root.dataset.replay = String(seq);
    for (const li of timeline.children) li.classList.toggle("future", +li.dataset.seq > seq);
    render(at);
  }

  // -- timeline ---------------------------------------------------------------------------

  const short = (v, n = 140) => {
    const s = typeof v === "string" ? v : JSON.stringify(v);
    return s === undefined ? "" : (s.length > n ? `${s.slice(0, n)}…` : s);
  };
  const money = (x) => `$${Number(x || 0).toFixed(4)}`;

  function summary(e) {
    const p = e.payload || {};
    switch (e.type) {
      case "task.status": return `${p.status}${p.reason ? ` — ${p.reason}` : ""}`;
      case "plan.set": {
        const n = (p.plan?.nodes || []).length;
        return `plan of ${n} node${n === 1 ? "" : "s"} (${p.source || "submitted"})`;
      }
      case "plan.corrected": return `correction round ${p.round}: ${(p.nodes || []).map((n) => n.id).join(", ")}`;
      case "node.started": return `${p.node_id} attempt ${p.attempt}`;
      case "tool.called": return `${p.node_id} → ${p.tool}(${short(p.args, 100)})`;
      case "tool.result": return `${p.node_id} ← ${p.error ? `error: ${short(p.error)}` : short(p.output)}`;
      case "node.retry": return `${p.node_id} retry ${p.attempt ?? ""} ${short(p.error || "", 100)}`;
      case "node.done": return `${p.node_id}${p.skipped ? " skipped" : ""}`;
      case "node.failed": return `${p.node_id}: ${short(p.error)}`;
      case "verify.verdicts": return p.passed ? "all acceptance tests passed" : "acceptance tests failed";
      case "artifact.published": return p.artifact?.name || "";
      case "llm.called": return `${p.purpose || "model"} · ${p.model || p.group || ""} · ${p.tokens_in ?? 0}→${p.tokens_out ?? 0} tokens · ${money(p.cost_usd)}${p.latency_s != null ? ` · ${Number(p.latency_s).toFixed(2)} s` : ""}`;
      case "agent.step": {
        const m = p.message || {};
        const calls = (m.tool_calls || []).map((c) => c.function?.name || c.name).filter(Boolean);
        return `${p.node_id} turn ${p.step}: ${calls.length ? `calls ${calls.join(", ")}` : short(m.content || "", 160)}`;
      }
      case "message.received": return short(p.text);
      case "budget.raised": return short({ max_cost_usd: p.max_cost_usd, max_llm_calls: p.max_llm_calls });
      case "iteration.started": return `iteration ${p.iteration}: ${short(p.text)}`;
      default: return "";
    }
  }

  // What the browser saw at a page step: the screenshot the web tools saved, with its page's
  // URL and title. Served by the console while the task runs; published with the rest at the end.
  function browserShot(e) {
    const out = e.type === "tool.result" ? e.payload?.output : null;
    if (!out || typeof out !== "object") return null;
    const ev = out.evidence || {};
    const name = ev.screenshot || (/^web\/.*\.png$/.test(out.name || "") ? out.name : null);
    if (!name) return null;
    const url = ev.url || out.url || "";
    const title = ev.title || out.title || "";
    const src = `/console/tasks/${encodeURIComponent(taskId)}/shots/${name.split("/").map(encodeURIComponent).join("/")}`;
    return el("figure", { class: "shot" },
      el("img", { src, alt: `What the browser saw: ${title || url}`, loading: "lazy", width: 640, height: 400 }),
      el("figcaption", {}, title ? el("strong", { text: title }) : null, title ? " · " : null,
        el("code", { class: "shot-url", text: url })));
  }

  function renderEvent(e) {
    const time = new Date(e.ts);
    const payload = JSON.stringify(e.payload, null, 2);
    return el("li", { class: `ev ev-${e.type.split(".")[0]}`, "data-type": e.type, "data-seq": String(e.seq) },
      el("details", {},
        el("summary", {},
          el("span", { class: "seq", text: `#${e.seq}` }),
          el("time", { datetime: e.ts, text: time.toLocaleTimeString() }),
          el("span", { class: "etype", text: e.type }),
          el("span", { class: "esum", text: summary(e) })),
        // Focusable: a long payload scrolls, and keyboard users must be able to scroll it too.
        el("pre", { class: "code", tabindex: "0", text: payload.length > 20000 ? `${payload.slice(0, 20000)}…` : payload })),
      browserShot(e));
  }

  $("event-filter").addEventListener("change", applyFilter);
  function applyFilter() {
    const prefixes = $("event-filter").value.split("|").filter(Boolean);
    for (const li of timeline.children) {
      li.hidden = prefixes.length > 0 && !prefixes.some((p) => li.dataset.type.startsWith(p));
    }
  }
  new MutationObserver(applyFilter).observe(timeline, { childList: true });

  // -- state: header, graph, verdicts, artifacts, actions -----------------------------------

  function render(t) {
    const status = $("task-status");
    status.textContent = t.status.replaceAll("_", " ");
    status.className = `status s-${t.status}`;
    root.dataset.status = t.status;
    const facts = $("facts");
    facts.replaceChildren();
    const fact = (k, v) => facts.append(el("div", {}, el("dt", { text: k }), el("dd", { text: v })));
    fact("Cost", `${money(t.usage.cost_usd)} of ${money(t.budget.max_cost_usd)}`);
    fact("Model calls", `${t.usage.llm_calls} of ${t.budget.max_llm_calls}`);
    fact("Tokens", `${t.usage.tokens_in} in · ${t.usage.tokens_out} out`);
    fact("Priority", t.priority);
    fact("Iteration", String(t.iteration));
    if (t.plan_source) fact("Planned by", t.plan_source);
    if (t.queue_position) fact("Queue position", String(t.queue_position));
    if (t.created_at) fact("Submitted", new Date(t.created_at).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }));
    const reason = $("task-reason");
    // Members read why a waiting task waits next to the reply buttons.
    reason.hidden = !t.reason || (member && t.status === "waiting_for_input");
    reason.textContent = t.reason || "";
    drawPlan(t);
    renderVerdicts(t.verdicts);
    renderArtifacts(t.artifacts);
    if (member) renderActions(t);
    if (member) $("actions-h").closest("section").hidden = replayAt !== null; // no acting on the past
  }

  const NODE_W = 168, NODE_H = 48, GAP_X = 44, GAP_Y = 16, PAD = 12, BAND = 26;
  const SVG = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs = {}, text) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };

  function layout(nodes, states) {
    // Nodes of each round (0: the plan; 1, 2…: corrections) get their own band; within a
    // band a node's column is its longest path from the band's roots.
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const roundOf = (id) => states[id]?.round ?? 0;
    const depth = new Map();
    const depthOf = (id, seen = new Set()) => {
      if (depth.has(id)) return depth.get(id);
      if (seen.has(id)) return 0;
      seen.add(id);
      const n = byId.get(id);
      const same = (n?.deps || []).filter((d) => byId.has(d) && roundOf(d) === roundOf(id));
      const d = same.length ? 1 + Math.max(...same.map((x) => depthOf(x, seen))) : 0;
      depth.set(id, d);
      return d;
    };
    const rounds = [...new Set(nodes.map((n) => roundOf(n.id)))].sort((a, b) => a - b);
    const pos = new Map();
    let y = PAD, width = 0;
    const bands = [];
    for (const r of rounds) {
      const cols = new Map();
      for (const n of nodes.filter((m) => roundOf(m.id) === r)) {
        const c = depthOf(n.id);
        if (!cols.has(c)) cols.set(c, []);
        cols.get(c).push(n.id);
      }
      const top = y + BAND;
      let rows = 0;
      for (const [c, ids] of cols) {
        ids.forEach((id, i) => pos.set(id, { x: PAD + c * (NODE_W + GAP_X), y: top + i * (NODE_H + GAP_Y) }));
        rows = Math.max(rows, ids.length);
        width = Math.max(width, PAD + (c + 1) * (NODE_W + GAP_X));
      }
      bands.push({ round: r, y });
      y = top + rows * (NODE_H + GAP_Y) + PAD;
    }
    return { pos, bands, width: Math.max(width, 200), height: y };
  }

  function drawPlan(t) {
    const box = $("dag");
    const list = $("node-list");
    const nodes = t.plan?.nodes || [];
    if (!nodes.length) {
      box.replaceChildren(el("p", { class: "hint", text: t.status === "queued" || t.status === "planning" ? "Planning…" : "No plan." }));
      list.replaceChildren();
      return;
    }
    const states = t.nodes || {};
    const { pos, bands, width, height } = layout(nodes, states);
    const g = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "dag-svg", "aria-hidden": "true" });
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 8 8", refX: "8", refY: "4", markerWidth: "8", markerHeight: "8", orient: "auto" });
    marker.append(svg("path", { d: "M0,0 L8,4 L0,8 z", class: "arrow" }));
    defs.append(marker);
    g.append(defs);
    for (const b of bands) {
      g.append(svg("text", { x: PAD, y: b.y + 16, class: "band" }, b.round === 0 ? `Iteration ${t.iteration} plan` : `Correction round ${b.round}`));
    }
    for (const n of nodes) {
      const to = pos.get(n.id);
      for (const d of n.deps || []) {
        const from = pos.get(d);
        if (!from || !to) continue;
        const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
        const mx = (x1 + x2) / 2;
        g.append(svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "edge", "marker-end": "url(#arrow)" }));
      }
    }
    for (const n of nodes) {
      const p = pos.get(n.id);
      const s = states[n.id] || { status: "pending", attempts: 0 };
      const grp = svg("g", { class: `node n-${s.status}`, transform: `translate(${p.x},${p.y})`, "data-node": n.id, "data-status": s.status });
      grp.append(svg("rect", { width: NODE_W, height: NODE_H, rx: "8" }));
      grp.append(svg("text", { x: "10", y: "19", class: "nid" }, short(n.id, 20)));
      const sub = `${n.kind === "agent" ? "agent" : n.tool || "tool"} · ${s.status}${s.attempts > 1 ? ` ×${s.attempts}` : ""}`;
      grp.append(svg("text", { x: "10", y: "37", class: "nsub" }, short(sub, 24)));
      grp.append(svg("title", {}, `${n.id}: ${s.status}${s.error ? ` — ${s.error}` : ""}`));
      g.append(grp);
    }
    box.replaceChildren(g);
    list.replaceChildren(...nodes.map((n) => {
      const s = states[n.id] || { status: "pending" };
      return el("li", { "data-node": n.id, "data-status": s.status },
        el("span", { class: `status s-${s.status}`, text: s.status }), " ",
        el("strong", { text: n.id }), ` ${n.kind === "agent" ? "agent" : n.tool || ""}`,
        s.round ? ` · round ${s.round}` : "", s.attempts > 1 ? ` · ${s.attempts} attempts` : "",
        s.error ? el("span", { class: "err", text: ` — ${short(s.error, 200)}` }) : null);
    }));
  }

  function renderVerdicts(verdicts) {
    const ul = $("verdicts");
    if (!verdicts?.length) { ul.replaceChildren(el("li", { class: "hint", text: "No verdicts yet." })); return; }
    ul.replaceChildren(...verdicts.map((v) => el("li", { class: v.passed ? "pass" : "fail", "data-test": v.test_id },
      el("span", { class: "mark", "aria-hidden": "true", text: v.passed ? "✓" : "✗" }),
      el("strong", { text: `${v.test_id} ${v.passed ? "passed" : "failed"}` }), ` — ${v.reason}`,
      ...(v.citations?.length ? [citationList(v.citations)] : []))));
  }

  // Each citation a citations_supported test checked: the claim, its source, the passage that
  // best matches it and how closely.
  function citationList(citations) {
    return el("ul", { class: "citations" }, ...citations.map((c) => el("li", { class: c.supported ? "pass" : "fail" },
      el("span", { class: "mark", "aria-hidden": "true", text: c.supported ? "✓" : "✗" }),
      el("strong", { text: `[${c.n}] ${c.supported ? "supported" : "not supported"}` }),
      ` (${c.verbatim ? "quoted verbatim" : `similarity ${Number(c.score).toFixed(2)}`}): “${c.claim}”`,
      el("div", { class: "hint", text: `Source: ${c.source || "not listed"}` }),
      el("blockquote", { text: c.passage || "no matching passage" }))));
  }

  const size = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
  let shownArtifacts = "";

  function renderArtifacts(artifacts) {
    const key = JSON.stringify(artifacts || []);
    if (key === shownArtifacts) return; // keep focus and an open preview while the task runs
    shownArtifacts = key;
    // An open preview of an artifact that is not in the list (a replay of an earlier moment) closes.
    if (!(artifacts || []).some((a) => a.name === $("preview-title").textContent)) $("preview").hidden = true;
    const body = $("artifacts");
    if (!artifacts?.length) { body.replaceChildren(el("tr", {}, el("td", { colspan: "4", class: "hint", text: "None yet." }))); return; }
    body.replaceChildren(...artifacts.map((a) => {
      const href = `${base}/artifacts/${a.name.split("/").map(encodeURIComponent).join("/")}`;
      const open = el("button", { type: "button", class: "link", text: "Preview", "aria-label": `Preview ${a.name}` });
      open.addEventListener("click", () => showPreview(a));
      return el("tr", { "data-artifact": a.name, "data-sha256": a.sha256 },
        el("td", { text: a.name }), el("td", { class: "num", text: size(a.size) }),
        el("td", {}, el("code", { class: "sha", text: a.sha256 })),
        el("td", { class: "open" }, open, " ", el("a", { href, download: a.name.split("/").pop(), text: "Download", "aria-label": `Download ${a.name}` })));
    }));
  }

  async function showPreview(a) {
    const box = $("preview");
    box.hidden = false;
    $("preview-title").textContent = a.name;
    const content = $("preview-content");
    content.textContent = "loading…";
    const r = await fetch(`/console/tasks/${encodeURIComponent(taskId)}/preview/${a.name.split("/").map(encodeURIComponent).join("/")}`,
      { credentials: "same-origin" });
    // The server renders the preview with every artifact byte escaped (Markdown without raw HTML).
    content.innerHTML = await r.text();
    box.focus();
  }

  // -- actions (members) --------------------------------------------------------------------

  let cancelArmed = false;

  function renderActions(t) {
    const ended = TERMINAL.has(t.status);
    const waiting = t.status === "waiting_for_input";
    $("reply-box").hidden = !waiting;
    $("waiting-why").textContent = waiting ? (t.reason || t.waiting_on || "") : "";
    renderInDoubt(waiting ? t.in_doubt || [] : []);
    $("message-label").textContent = waiting ? "Reply with guidance" : ended ? "Follow-up (starts a new iteration)" : "Message to the task";
    $("message-interrupt-row").hidden = waiting || ended; // only a running task can be interrupted
    $("message-form").hidden = t.status === "cancelled";
    $("budget-form").hidden = ended;
    $("cancel").hidden = ended;
    if (!$("budget-cost").value) $("budget-cost").placeholder = String(t.budget.max_cost_usd);
    if (!$("budget-calls").value) $("budget-calls").placeholder = String(t.budget.max_llm_calls);
  }

  // A side-effecting call in doubt: what ran, with which arguments, how often it started,
  // so that the user can tell whether its effect happened before choosing retry or skip.
  function renderInDoubt(calls) {
    const ul = $("in-doubt");
    ul.hidden = calls.length === 0;
    ul.replaceChildren(...calls.map((c) => el("li", { "data-node": c.node_id, "data-runs": String(c.runs ?? "") },
      el("strong", { text: `${c.tool}` }), ` in node ${c.node_id}${c.call_id ? ` (call ${c.call_id})` : ""} · `,
      `started ${c.runs ?? "?"} time${c.runs === 1 ? "" : "s"}`,
      c.known ? el("span", { class: "err", text: ` — ${short(c.known, 160)}` }) : null,
      el("pre", { class: "code", text: short(c.args, 400) }))));
  }

  function say(text, bad = false) {
    const out = $("action-result");
    out.textContent = text;
    out.className = bad ? "error" : "hint";
  }

  async function act(what, call) {
    try {
      await call();
      say(`${what}: sent.`);
      if (!source) connect(); // a follow-up on an ended task: follow the new iteration
      scheduleRefresh();
    } catch (e) {
      say(`${what}: ${e.message}`, true);
    }
  }

  if (member) {
    for (const b of document.querySelectorAll("[data-reply]")) {
      b.addEventListener("click", () => act(`Reply ${b.dataset.reply}`, () => api(`${base}/messages`, { method: "POST", body: { text: b.dataset.reply } })));
    }
    $("message-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = $("message-text").value.trim();
      if (!text) return;
      const on_running = $("message-interrupt").checked ? "interrupt" : "enqueue";
      act("Message", async () => { await api(`${base}/messages`, { method: "POST", body: { text, on_running } }); $("message-text").value = ""; });
    });
    $("budget-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const body = {};
      const cost = $("budget-cost").value.trim(), calls = $("budget-calls").value.trim();
      if (cost) body.max_cost_usd = Number(cost);
      if (calls) body.max_llm_calls = Number.parseInt(calls, 10);
      if (!cost && !calls) { say("Raise budget: give a new USD limit, a call limit, or both.", true); return; }
      act("Raise budget", () => api(`${base}/budget`, { method: "POST", body }));
    });
    const cancel = $("cancel");
    cancel.addEventListener("click", () => {
      if (!cancelArmed) {
        cancelArmed = true;
        cancel.textContent = "Confirm: cancel this task";
        setTimeout(() => { cancelArmed = false; cancel.textContent = "Cancel task"; }, 5000);
        return;
      }
      cancelArmed = false;
      cancel.textContent = "Cancel task";
      act("Cancel", () => api(base, { method: "DELETE" }));
    });
  }

  refresh();
  connect();
})();
