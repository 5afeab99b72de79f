// Runs: filtered by workflow, status and creation time, keyset-paginated (newest first,
// ?before= the last run of the page), kept live by the stream of every run's events.

import {api, stream} from "./api.js";
import {badge, clear, fill, fmtDuration, fmtTime, h, seg} from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const PAGE = 50;

function toSeconds(local) {
  if (!local) return "";
  const t = new Date(local).getTime();
  return Number.isNaN(t) ? "" : String(t / 1000);
}

function toLocal(seconds) {
  if (!seconds) return "";
  const d = new Date(Number(seconds) * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export async function runsPage(main, query, ctx) {
  const filters = {
    workflow_id: query.get("workflow_id") || "",
    status: query.get("status") || "",
    since: query.get("since") || "",
    until: query.get("until") || "",
    limit: query.get("limit") || "",
  };
  const before = query.get("before") || "";
  const go = (changes) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries({...filters, ...changes})) if (v) q.set(k, v);
    location.hash = `#/runs${q.toString() ? `?${q}` : ""}`;
  };

  const workflowSelect = h("select", {id: "f-workflow", name: "workflow_id"},
    h("option", {value: ""}, "all workflows"));
  const statusSelect = h("select", {id: "f-status", name: "status"},
    h("option", {value: ""}, "any status"),
    STATUSES.map((st) => h("option", {value: st, selected: st === filters.status}, st)));
  const since = h("input", {id: "f-since", type: "datetime-local", value: toLocal(filters.since)});
  const until = h("input", {id: "f-until", type: "datetime-local", value: toLocal(filters.until)});
  const form = h("form", {class: "filters", role: "search", "aria-label": "Filter runs",
    onsubmit: (e) => {
      e.preventDefault();
      go({...filters, workflow_id: workflowSelect.value, status: statusSelect.value,
        since: toSeconds(since.value), until: toSeconds(until.value), before: ""});
    }},
  h("label", {for: "f-workflow"}, "Workflow"), workflowSelect,
  h("label", {for: "f-status"}, "Status"), statusSelect,
  h("label", {for: "f-since"}, "Created from"), since,
  h("label", {for: "f-until"}, "to"), until,
  h("button", {type: "submit"}, "Filter"),
  h("button", {type: "button", onclick: () => { location.hash = "#/runs"; }}, "Clear"));

  const tbody = h("tbody", {id: "runs-body"});
  const table = h("table", {class: "runs", "aria-label": "Runs"},
    h("thead", {}, h("tr", {},
      ["Run", "Workflow", "Version", "Status", "Created", "Duration"].map((t) => h("th", {scope: "col"}, t)))),
    tbody);
  const pager = h("nav", {class: "pager", "aria-label": "Pages"});
  fill(main, h("h1", {}, "Runs"), form, h("div", {class: "scroll"}, table), pager);

  api("/workflows", {signal: ctx.signal}).then((data) => {
    for (const wf of data.workflows) {
      workflowSelect.append(h("option", {value: wf.id, selected: wf.id === filters.workflow_id}, wf.id));
    }
  }).catch(ctx.fail);

  const rows = new Map();
  function row(run) {
    const duration = run.finished_at && run.started_at ? run.finished_at - run.started_at : null;
    return h("tr", {"data-run": run.run_id, "data-status": run.status},
      h("td", {}, h("a", {href: `#/runs/${seg(run.run_id)}`, class: "mono"}, run.run_id)),
      h("td", {}, h("a", {href: `#/workflows/${seg(run.workflow_id)}`}, run.workflow_id)),
      h("td", {}, run.version),
      h("td", {}, badge(run.status)),
      h("td", {}, fmtTime(run.created_at)),
      h("td", {}, fmtDuration(duration)));
  }

  async function load() {
    const q = new URLSearchParams({limit: String(PAGE)});
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (before) q.set("before", before);
    const data = await api(`/runs?${q}`, {signal: ctx.signal});
    clear(tbody);
    rows.clear();
    if (!data.runs.length) tbody.append(h("tr", {}, h("td", {colspan: 6, class: "empty"}, "No runs.")));
    for (const run of data.runs) {
      const tr = row(run);
      rows.set(run.run_id, tr);
      tbody.append(tr);
    }
    clear(pager);
    if (before) pager.append(h("a", {href: "#", onclick: (e) => { e.preventDefault(); go({before: ""}); }}, "⇤ Newest"));
    if (data.next_before) {
      pager.append(h("a", {href: "#", id: "older", onclick: (e) => { e.preventDefault(); go({before: data.next_before}); }}, "Older →"));
    }
    main.dataset.loaded = String(Date.now());
  }

  await load();
  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load().catch(ctx.fail); }, 250);
  };
  const q = new URLSearchParams({types: "run.*"});
  if (filters.workflow_id) q.set("workflow_id", filters.workflow_id);
  // "live" once the server holds the subscription: a run started after that is seen.
  stream(`/events?${q}`, (msg) => {
    const ev = msg.data;
    if (!before) refresh(); // the first page: new runs appear, statuses change
    else if (rows.has(ev.run_id)) refresh();
  }, {signal: ctx.signal, reconnect: true, onOpen: () => ctx.live(true)})
    .catch(ctx.fail).finally(() => ctx.live(false));
}
