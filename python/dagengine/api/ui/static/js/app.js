// The UI's router: #/runs, #/runs/ID, #/workflows, #/workflows/ID, #/triggers, #/engines.
// Each page gets a context whose signal aborts its requests and streams when it is left.

import {fill, h, toast} from "./dom.js";
import {enginesPage, triggersPage} from "./ops.js";
import {runPage} from "./run.js";
import {runsPage} from "./runs.js";
import {workflowPage, workflowsPage} from "./workflows.js";

let current = null;

function route() {
  if (current) current.abort();
  const controller = new AbortController();
  current = controller;
  const main = document.getElementById("main");
  const hash = location.hash.replace(/^#/, "") || "/runs";
  const [path, queryText] = hash.split("?", 2);
  const query = new URLSearchParams(queryText || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const live = document.getElementById("live");
  // Not live until this page's own stream is open: the page left cannot clear it (its
  // ctx.live is off once aborted), and a stale "live" told a user (and the browser tests)
  // that runs started now would be seen before this page was listening.
  live.textContent = "";
  live.classList.remove("on");
  const ctx = {
    signal: controller.signal,
    live(on) {
      if (controller.signal.aborted) return;
      live.textContent = on ? "● live" : "";
      live.classList.toggle("on", on);
    },
    fail(err) {
      if (controller.signal.aborted || (err && err.name === "AbortError")) return;
      toast(err && err.message ? err.message : String(err), true);
    },
  };
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.section === parts[0]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  delete main.dataset.loaded;
  fill(main, h("p", {class: "muted"}, "Loading…"));
  let page;
  if (parts[0] === "runs" && parts[1]) page = runPage(main, parts[1], ctx);
  else if (parts[0] === "workflows" && parts[1]) page = workflowPage(main, parts[1], query, ctx);
  else if (parts[0] === "workflows") page = workflowsPage(main, ctx);
  else if (parts[0] === "triggers") page = triggersPage(main, ctx);
  else if (parts[0] === "engines") page = enginesPage(main, ctx);
  else page = runsPage(main, query, ctx);
  page.then(() => { main.dataset.page = parts[0] || "runs"; }).catch((err) => {
    if (controller.signal.aborted || err.name === "AbortError") return;
    fill(main, h("h1", {}, "Error"), h("p", {class: "error", id: "page-error"}, err.message || String(err)));
  });
}

window.addEventListener("hashchange", route);
route();
