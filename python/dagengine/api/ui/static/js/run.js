// One run: its DAG drawn from the workflow version's spec and kept live from the run's event
// stream (events are queued and applied once per animation frame, none dropped); a node
// panel with attempts, timings, inputs and output, error and traceback, and live logs;
// cancel, re-run and retry from failed. A mapped node (`sq`, expanded at run time into items
// `sq[0]`, `sq[1]`, ...) is drawn once, with its items' counts; its panel lists the items.

import {api, stream} from "./api.js";
import {badge, clear, fill, fmtDuration, fmtTime, h, jsonBlock, seg, toast} from "./dom.js";
import {Graph, specNodes} from "./graph.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);
const ITEM = /^(.+)\[(\d+)\]$/;
const ITEMS_SHOWN = 500;
const ITEM_FINAL = new Set(["succeeded", "failed", "skipped", "cancelled"]);
const NODE_STATES = {
  "node.started": "running",
  "node.succeeded": "succeeded",
  "node.failed": "failed",
  "node.retrying": "retrying",
  "node.skipped": "skipped",
  "node.cancelled": "cancelled",
};

export async function runPage(main, runId, ctx) {
  let run = await api(`/runs/${seg(runId)}`, {signal: ctx.signal});
  let spec = null;
  try {
    const wf = await api(`/workflows/${seg(run.workflow_id)}`, {signal: ctx.signal});
    const v = wf.versions.find((x) => x.version === run.version);
    spec = v ? v.spec : null;
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  const nodes = spec ? specNodes(spec) : Object.keys(run.nodes || {}).map((id) => ({id, deps: []}));
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const model = new Map(nodes.map((n) => [n.id, {state: "pending", text: "", attempts: [], error: null, items: null}]));
  let eventCount = 0;

  // -- header and actions --
  const status = h("span", {id: "run-status"}, badge(run.status));
  const times = h("dl", {class: "facts"});
  const cancelBtn = h("button", {id: "cancel", type: "button", onclick: () => act(cancel)}, "Cancel");
  const rerunBtn = h("button", {id: "rerun", type: "button", onclick: () => act(rerun)}, "Re-run");
  const retryBtn = h("button", {id: "retry", type: "button", onclick: () => act(retry),
    title: "A new run that reuses the outputs of the nodes this run completed"}, "Retry from failed");
  const counter = h("span", {id: "event-count", class: "muted"}, "0 events");
  const graphBox = h("div", {class: "graph", id: "graph"});
  const panel = h("aside", {class: "panel", id: "node-panel", "aria-label": "Node", hidden: true});
  const errorBox = h("div", {id: "run-error"});
  fill(main, 
    h("h1", {}, "Run ", h("span", {class: "mono"}, run.run_id)),
    h("p", {class: "subtitle"},
      h("a", {href: `#/workflows/${seg(run.workflow_id)}`}, run.workflow_id), ` @ ${run.version} `, status, " ", counter),
    h("div", {class: "actions"}, cancelBtn, rerunBtn, retryBtn),
    times, errorBox,
    h("div", {class: "run-body"}, h("div", {class: "scroll graph-scroll"}, graphBox), panel),
  );

  function renderHeader() {
    fill(status, badge(run.status));
    status.dataset.status = run.status;
    const done = FINISHED.has(run.status);
    cancelBtn.disabled = done;
    retryBtn.disabled = !(run.status === "failed" || run.status === "cancelled");
    fill(times, 
      h("dt", {}, "Created"), h("dd", {}, fmtTime(run.created_at)),
      h("dt", {}, "Started"), h("dd", {}, fmtTime(run.started_at)),
      h("dt", {}, "Finished"), h("dd", {}, fmtTime(run.finished_at)),
      h("dt", {}, "Attempt"), h("dd", {}, String(run.attempt)),
      h("dt", {}, "Engine"), h("dd", {}, run.engine_id || "—"),
    );
    clear(errorBox);
    if (run.error) {
      errorBox.append(h("p", {class: "error"}, `${run.error.type || "error"}: ${run.error.message || ""}`));
    }
  }

  async function act(fn) {
    try { await fn(); } catch (err) { toast(err.message, true); }
  }
  async function cancel() {
    const r = await api(`/runs/${seg(runId)}/cancel`, {method: "POST"});
    toast(r.cancelled ? `cancelled (${r.status})` : `not cancelled: the run is ${r.status}`);
  }
  async function rerun() {
    const r = await api(`/workflows/${seg(run.workflow_id)}/runs`, {
      method: "POST", body: {inputs: run.inputs || {}, version: run.version}});
    location.hash = `#/runs/${seg(r.run_id)}`;
  }
  async function retry() {
    const r = await api(`/runs/${seg(runId)}/retry`, {method: "POST"});
    toast(`retry ${r.run_id} reuses ${r.reused.length} node(s)`);
    location.hash = `#/runs/${seg(r.run_id)}`;
  }

  // -- graph --
  const graph = new Graph(graphBox, nodes, {onSelect: (id) => openPanel(id)});
  const dirty = new Set();
  let panelNode = null;
  let logAbort = null;

  // The mapped node and index an item id names (`sq[3]`), or null.
  function itemOf(id) {
    const match = ITEM.exec(id || "");
    return match && model.has(match[1]) ? {base: match[1], index: Number(match[2])} : null;
  }

  function itemsOf(m) {
    if (!m.items) m.items = {total: 0, all: new Map(), done: 0, failed: 0, running: 0};
    return m.items;
  }

  // Which count an item state adds to (kept as items change, not recounted per frame).
  function bucket(state) {
    if (state === "succeeded" || state === "skipped") return "done";
    if (state === "failed" || state === "cancelled") return "failed";
    if (state === "running" || state === "retrying") return "running";
    return null;
  }

  function setItemState(items, it, state) {
    const from = bucket(it.state);
    const to = bucket(state);
    if (from) items[from] -= 1;
    if (to) items[to] += 1;
    it.state = state;
  }

  function item(m, index) {
    const items = itemsOf(m);
    let it = items.all.get(index);
    if (!it) {
      it = {state: "pending", attempts: 0, error: null};
      items.all.set(index, it);
      if (index >= items.total) items.total = index + 1;
    }
    return it;
  }

  // The counts a mapped node shows: done, failed and running of its items' total.
  function counts(m) {
    const {done, failed, running, total} = m.items;
    return {done, failed, running, total};
  }

  function summarize(id, m) {
    if (!m.items) return;
    const c = counts(m);
    let text = `${c.done}/${c.total}`;
    if (c.failed) text += ` · ${c.failed} failed`;
    if (c.running) text += ` · ${c.running} running`;
    m.text = text;
    graph.setItems(id, c);
  }

  function applyItemDetail(id, info) {
    const at = itemOf(id);
    if (!at) return false;
    const m = model.get(at.base);
    const it = item(m, at.index);
    if (FINISHED.has(run.status) || !ITEM_FINAL.has(it.state)) setItemState(m.items, it, info.status);
    it.attempts = Math.max(it.attempts, info.attempts || 0);
    if (info.error) it.error = info.error;
    dirty.add(at.base);
    return true;
  }

  function applyDetail() {
    for (const [id, info] of Object.entries(run.nodes || {})) {
      const m = model.get(id);
      if (!m) {
        applyItemDetail(id, info);
        continue;
      }
      if (info.status === "succeeded" && info.attempts === 0 && !m.attempts.length) {
        m.state = "succeeded";
        m.text = info.cached_from ? `cached from ${info.cached_from}` : "reused";
      } else if (FINISHED.has(run.status) || m.state === "pending") {
        m.state = info.status;
        if (info.status === "skipped" && info.skip_reason) m.text = `skipped: ${info.skip_reason}`;
        else if (info.status !== "skipped" || !m.text) m.text = "";
      }
      if (info.error) m.error = info.error;
      dirty.add(id);
    }
  }

  function applyItemEvent(ev, next, at) {
    const m = model.get(at.base);
    const it = item(m, at.index);
    setItemState(m.items, it, next);
    if (ev.type === "node.started") it.attempts += 1;
    if (ev.data && ev.data.error) it.error = ev.data.error;
    if (m.state === "pending" || m.state === "retrying") m.state = "running";
    dirty.add(at.base);
  }

  function applyEvent(ev) {
    eventCount += 1;
    const next = NODE_STATES[ev.type];
    if (ev.type === "node.mapped" && model.has(ev.node_id)) {
      const m = model.get(ev.node_id);
      const data = ev.data || {};
      const total = Number(data.item_count ?? data.count ?? data.items ?? 0);
      const items = itemsOf(m);
      if (Number.isFinite(total) && total >= items.total) items.total = total;
      if (m.state === "pending") m.state = "running";
      dirty.add(ev.node_id);
    } else if (next && !model.has(ev.node_id) && itemOf(ev.node_id)) {
      applyItemEvent(ev, next, itemOf(ev.node_id));
    } else if (next && model.has(ev.node_id)) {
      const m = model.get(ev.node_id);
      const data = ev.data || {};
      m.state = next;
      m.text = "";
      if (ev.type === "node.started") {
        m.attempts.push({n: data.node_attempt, started: ev.time, ended: null, outcome: "running", error: null});
      } else if (next !== "skipped") {
        const last = m.attempts[m.attempts.length - 1];
        if (last && last.ended === null) {
          last.ended = ev.time;
          last.outcome = next === "retrying" ? "failed, retrying" : next;
          last.error = data.error || null;
        }
        if (data.error) m.error = data.error;
      }
      if (next === "skipped" && data.reason) m.text = `skipped: ${data.reason}`;
      if (next === "retrying") m.text = `retrying (attempt ${data.node_attempt || "?"} failed)`;
      dirty.add(ev.node_id);
    } else if (ev.type.startsWith("run.")) {
      if (ev.type === "run.started" || ev.type === "run.redispatched") run.status = "running";
      if (ev.type === "run.completed") run.status = "succeeded";
      if (ev.type === "run.failed") run.status = "failed";
      if (ev.type === "run.cancelled") run.status = "cancelled";
      headerDirty = true;
    }
  }

  let queue = [];
  let headerDirty = false;
  let frame = 0;
  function flush() {
    frame = 0;
    const batch = queue;
    queue = [];
    for (const ev of batch) applyEvent(ev);
    for (const id of dirty) {
      const m = model.get(id);
      summarize(id, m);
      graph.setState(id, m.state, m.text || m.state);
    }
    const panelDirty = panelNode && dirty.has(panelNode);
    dirty.clear();
    counter.textContent = `${eventCount} events`;
    if (headerDirty) { headerDirty = false; renderHeader(); }
    if (panelDirty) renderPanel();
  }
  const schedule = () => { if (!frame) frame = requestAnimationFrame(flush); };

  applyDetail();
  renderHeader();
  flush();

  // -- node panel --
  const logBox = h("pre", {class: "logs", id: "node-logs", tabindex: "0", "aria-label": "Node logs"});

  async function openPanel(id) {
    panelNode = id;
    if (logAbort) logAbort.abort();
    logAbort = new AbortController();
    ctx.signal.addEventListener("abort", () => logAbort.abort(), {once: true});
    clear(logBox);
    renderPanel();
    panel.hidden = false;
    panel.focus();
    const signal = logAbort.signal;
    stream(`/runs/${seg(runId)}/logs?node=${encodeURIComponent(id)}&follow=true`, (msg) => {
      const line = msg.data;
      const who = line.node_id && line.node_id !== id ? `${line.node_id} ` : "";
      const text = line.truncated ? "[… truncated]" :
        `${fmtTime(line.time)} ${who}[${line.node_attempt ?? "?"}] ${line.level} ${line.message}`;
      logBox.append(h("span", {class: `log lv-${String(line.level).toLowerCase()}`}, text), "\n");
    }, {signal, resume: true}).then(() => {
      if (!signal.aborted) logBox.dataset.ended = "true";
    }).catch((err) => { if (!signal.aborted) toast(err.message, true); });
    try {
      run = await api(`/runs/${seg(runId)}`, {signal: ctx.signal});
      applyDetail();
      renderHeader();
      schedule();
      if (panelNode === id) renderPanel();
    } catch (err) { ctx.fail(err); }
  }

  function renderPanel() {
    const id = panelNode;
    const m = model.get(id);
    const info = (run.nodes || {})[id] || {};
    const deps = byId.get(id) ? byId.get(id).deps : [];
    const inputs = {};
    for (const d of deps) inputs[d] = (run.nodes || {})[d] ? run.nodes[d].output ?? null : null;
    const error = info.error || m.error;
    const attemptRows = m.attempts.map((a) => h("tr", {},
      h("td", {}, String(a.n ?? "?")), h("td", {}, fmtTime(a.started)), h("td", {}, fmtTime(a.ended)),
      h("td", {}, a.ended ? fmtDuration(a.ended - a.started) : "—"), h("td", {}, a.outcome)));
    fill(panel,
      h("div", {class: "panel-head"},
        h("h2", {id: "panel-title"}, h("span", {class: "mono"}, id)),
        h("button", {type: "button", class: "close", "aria-label": "Close node panel",
          onclick: () => { panel.hidden = true; panelNode = null; if (logAbort) logAbort.abort(); }}, "×")),
      h("p", {}, badge(m.state), m.text && m.text !== m.state ? ` ${m.text}` : ""),
      h("dl", {class: "facts"},
        h("dt", {}, "Attempts"), h("dd", {id: "panel-attempts"}, String(info.attempts ?? m.attempts.length)),
        h("dt", {}, "Started"), h("dd", {}, fmtTime(info.started_at ?? (m.attempts[0] || {}).started)),
        h("dt", {}, "Finished"), h("dd", {}, fmtTime(info.finished_at)),
        h("dt", {}, "Duration"), h("dd", {}, info.finished_at && info.started_at ? fmtDuration(info.finished_at - info.started_at) : "—")),
      m.attempts.length ? h("table", {class: "attempts", "aria-label": "Attempts"},
        h("thead", {}, h("tr", {}, ["#", "Started", "Ended", "Took", "Outcome"].map((t) => h("th", {scope: "col"}, t)))),
        h("tbody", {}, attemptRows)) : null,
      m.items ? itemsTable(m) : null,
      h("h3", {}, "Inputs (outputs of its dependencies)"), jsonBlock(inputs, "Node inputs"),
      h("h3", {}, "Output"), h("div", {id: "panel-output"}, jsonBlock(info.output ?? null, "Node output")),
      error ? h("div", {id: "panel-error"},
        h("h3", {}, "Error"),
        h("p", {class: "error"}, `${error.type || "error"}: ${error.message || ""}`),
        error.traceback ? h("pre", {class: "traceback", id: "panel-traceback", tabindex: "0"}, error.traceback) : null) : null,
      h("h3", {}, "Logs"), logBox,
    );
  }

  function itemsTable(m) {
    const c = counts(m);
    // The first items by index, without sorting them all (a map may have 100,000).
    const first = [];
    for (let index = 0; index < m.items.total && first.length < ITEMS_SHOWN; index++) {
      const it = m.items.all.get(index);
      if (it) first.push([index, it]);
    }
    const rows = first
      .map(([index, it]) => h("tr", {"data-item": String(index), "data-state": it.state},
        h("td", {class: "mono"}, `${panelNode}[${index}]`), h("td", {}, badge(it.state)),
        h("td", {}, String(it.attempts)),
        h("td", {}, it.error ? `${it.error.type || "error"}: ${it.error.message || ""}` : "")));
    const hidden = m.items.all.size - rows.length;
    return h("div", {id: "panel-items"},
      h("h3", {}, "Items"),
      h("p", {id: "panel-item-counts"},
        `${c.total} items: ${c.done} done, ${c.failed} failed, ${c.running} running`),
      h("table", {class: "attempts items", "aria-label": "Items"},
        h("thead", {}, h("tr", {}, ["Item", "State", "Attempts", "Error"].map((t) => h("th", {scope: "col"}, t)))),
        h("tbody", {}, rows)),
      hidden > 0 ? h("p", {class: "muted"}, `… and ${hidden} more`) : null);
  }

  // -- live --
  ctx.live(true);
  stream(`/runs/${seg(runId)}/events`, (msg) => {
    queue.push(msg.data);
    if (TERMINAL.has(msg.data.type)) {
      api(`/runs/${seg(runId)}`, {signal: ctx.signal}).then((fresh) => {
        run = fresh;
        applyDetail();
        headerDirty = true;
        schedule();
      }).catch(ctx.fail);
    }
    schedule();
  }, {signal: ctx.signal, resume: true}).catch(ctx.fail).finally(() => {
    ctx.live(false);
    main.dataset.streamEnded = "true";
  });
}
