// Triggers (cron: next fire times, last fires, pause/resume; HTTP: URL and auth mode) and
// engines (address, capacity, active runs, health), refreshed every few seconds.

import {api} from "./api.js";
import {badge, clear, fill, fmtTime, h, seg, toast} from "./dom.js";

const REFRESH_MS = 3000;

function every(ctx, fn) {
  const timer = setInterval(() => fn().catch(ctx.fail), REFRESH_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer), {once: true});
}

export async function triggersPage(main, ctx) {
  const cronBody = h("tbody", {id: "cron-body"});
  const httpBody = h("tbody", {id: "http-body"});
  fill(main, 
    h("h1", {}, "Triggers"),
    h("h2", {}, "Cron"),
    h("div", {class: "scroll"}, h("table", {"aria-label": "Cron triggers"}, h("thead", {}, h("tr", {},
      ["Trigger", "Workflow", "Schedule", "State", "Next fires", "Last fires", ""].map((t) => h("th", {scope: "col"}, t)))), cronBody)),
    h("h2", {}, "HTTP"),
    h("div", {class: "scroll"}, h("table", {"aria-label": "HTTP triggers"}, h("thead", {}, h("tr", {},
      ["Trigger", "Workflow", "URL", "Mode", "Auth"].map((t) => h("th", {scope: "col"}, t)))), httpBody)),
  );
  async function load() {
    const data = await api("/triggers", {signal: ctx.signal});
    clear(cronBody);
    for (const t of data.cron) {
      const toggle = async () => {
        try {
          await api(`/triggers/${seg(t.id)}/${t.paused ? "resume" : "pause"}`, {method: "POST"});
          await load();
        } catch (err) { toast(err.message, true); }
      };
      cronBody.append(h("tr", {"data-trigger": t.id},
        h("td", {}, t.id),
        h("td", {}, h("a", {href: `#/workflows/${seg(t.workflow_id)}`}, t.workflow_id), t.version ? ` @ ${t.version}` : ""),
        h("td", {}, h("code", {}, t.schedule), ` (${t.timezone})`),
        h("td", {}, badge(t.paused ? "paused" : t.active ? "active" : "stopped")),
        h("td", {}, h("ul", {class: "plain"}, t.next_fire_times.map((x) => h("li", {}, x)))),
        h("td", {}, h("ul", {class: "plain"}, [...t.last_fires].reverse().map((f) => h("li", {},
          fmtTime(f.scheduled), " ", h("a", {href: `#/runs/${seg(f.run_id)}`, class: "mono"}, f.run_id.slice(0, 12)))))),
        h("td", {}, h("button", {type: "button", class: "toggle", onclick: toggle}, t.paused ? "Resume" : "Pause"))));
    }
    if (!data.cron.length) cronBody.append(h("tr", {}, h("td", {colspan: 7, class: "empty"}, "No cron triggers.")));
    clear(httpBody);
    for (const t of data.http) {
      httpBody.append(h("tr", {},
        h("td", {}, t.id),
        h("td", {}, h("a", {href: `#/workflows/${seg(t.workflow_id)}`}, t.workflow_id)),
        h("td", {}, h("code", {}, `POST ${t.url}`)),
        h("td", {}, t.mode), h("td", {}, t.auth)));
    }
    if (!data.http.length) httpBody.append(h("tr", {}, h("td", {colspan: 5, class: "empty"}, "No HTTP triggers.")));
  }
  await load();
  every(ctx, load);
}

export async function enginesPage(main, ctx) {
  const body = h("tbody", {id: "engines-body"});
  fill(main, h("h1", {}, "Engines"), h("div", {class: "scroll"}, h("table", {"aria-label": "Engines"},
    h("thead", {}, h("tr", {}, ["Engine", "Address", "Capacity", "Active runs", "Health"].map((t) => h("th", {scope: "col"}, t)))), body)));
  async function load() {
    const data = await api("/engines", {signal: ctx.signal});
    clear(body);
    for (const e of data.engines) {
      body.append(h("tr", {"data-engine": e.engine_id},
        h("td", {}, e.engine_id), h("td", {}, e.address || "in-process"),
        h("td", {}, String(e.capacity)), h("td", {}, String(e.active_runs)),
        h("td", {}, badge(e.healthy ? "healthy" : "unhealthy"))));
    }
    if (!data.engines.length) body.append(h("tr", {}, h("td", {colspan: 5, class: "empty"}, "No engines.")));
  }
  await load();
  every(ctx, load);
}
