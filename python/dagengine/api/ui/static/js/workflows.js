// Workflows: each one's versions in semver order (newest first) with yank / restore and
// roll back, its dependents, a version's spec and graph, and a run form generated from the
// version's input schema (a JSON object editor when it has none).

import {api} from "./api.js";
import {badge, clear, fill, fmtTime, h, jsonBlock, seg, toast} from "./dom.js";
import {Graph, specNodes} from "./graph.js";

export async function workflowsPage(main, ctx) {
  const data = await api("/workflows", {signal: ctx.signal});
  const tbody = h("tbody", {}, data.workflows.map((wf) => h("tr", {},
    h("td", {}, h("a", {href: `#/workflows/${seg(wf.id)}`}, wf.id)),
    h("td", {}, wf.latest),
    h("td", {}, String(wf.versions.length)))));
  if (!data.workflows.length) tbody.append(h("tr", {}, h("td", {colspan: 3, class: "empty"}, "No workflows.")));
  fill(main, h("h1", {}, "Workflows"), h("div", {class: "scroll"}, h("table", {"aria-label": "Workflows"},
    h("thead", {}, h("tr", {}, ["Workflow", "Latest", "Versions"].map((t) => h("th", {scope: "col"}, t)))), tbody)));
}

/** The input schema of a version, wherever the server puts it (absent: null). */
function inputSchema(version) {
  const found = version.inputs_schema || version.input_schema || version.inputs
    || (version.spec && typeof version.spec.inputs === "object" ? version.spec.inputs : null);
  return found && typeof found === "object" && !Array.isArray(found) ? found : null;
}

function fieldFor(name, prop, required) {
  const id = `in-${name}`;
  const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
  const common = {id, name, "data-type": type || "json", required: required || undefined};
  let input;
  if (Array.isArray(prop.enum)) {
    input = h("select", common, required ? null : h("option", {value: ""}, "—"),
      prop.enum.map((v) => h("option", {value: JSON.stringify(v),
        selected: JSON.stringify(v) === JSON.stringify(prop.default)}, String(v))));
    input.dataset.type = "enum";
  } else if (type === "boolean") {
    input = h("input", {...common, type: "checkbox", checked: prop.default === true, required: undefined});
  } else if (type === "integer" || type === "number") {
    input = h("input", {...common, type: "number", step: type === "integer" ? "1" : "any",
      min: prop.minimum, max: prop.maximum, value: prop.default});
  } else if (type === "string") {
    input = h("input", {...common, type: "text", value: prop.default, minlength: prop.minLength,
      maxlength: prop.maxLength});
  } else {
    input = h("textarea", {...common, rows: 3},
      prop.default !== undefined ? JSON.stringify(prop.default, null, 2) : "");
  }
  return h("div", {class: "field"},
    h("label", {for: id}, name, required ? " *" : ""), input,
    prop.description ? h("small", {}, prop.description) : null);
}

function readForm(form, schema) {
  if (!schema) return JSON.parse(form.elements.inputs.value || "{}");
  const out = {};
  for (const el of form.querySelectorAll("[data-type]")) {
    const kind = el.dataset.type;
    if (kind === "boolean") { out[el.name] = el.checked; continue; }
    if (el.value === "") continue;
    if (kind === "integer") out[el.name] = parseInt(el.value, 10);
    else if (kind === "number") out[el.name] = Number(el.value);
    else if (kind === "string") out[el.name] = el.value;
    else out[el.name] = JSON.parse(el.value);
  }
  return out;
}

export async function workflowPage(main, workflowId, query, ctx) {
  const wf = await api(`/workflows/${seg(workflowId)}`, {signal: ctx.signal});
  const yanked = new Set(wf.yanked || []);
  const versions = [...wf.versions].reverse(); // the API lists them ascending (semver)
  const chosen = versions.find((v) => v.version === query.get("version")) || versions.find((v) => v.version === wf.latest) || versions[0];
  const reload = () => workflowPage(main, workflowId, query, ctx).catch(ctx.fail);
  const act = async (fn) => { try { await fn(); reload(); } catch (err) { toast(err.message, true); } };

  const versionRows = versions.map((v) => h("tr", {"data-version": v.version, class: v.version === chosen.version ? "chosen" : undefined},
    h("td", {}, h("a", {href: `#/workflows/${seg(workflowId)}?version=${encodeURIComponent(v.version)}`}, v.version),
      v.version === wf.latest ? " " : null, v.version === wf.latest ? badge("latest") : null,
      yanked.has(v.version) ? " " : null, yanked.has(v.version) ? badge("yanked") : null),
    h("td", {}, fmtTime(v.registered_at)),
    h("td", {}, v.runnable ? "yes" : `no: ${v.problem || ""}`),
    h("td", {}, (v.dependencies || []).map((d) => `${d.workflow_id} ${d.version_range}`).join(", ") || "—"),
    h("td", {}, yanked.has(v.version)
      ? h("button", {type: "button", class: "unyank", onclick: () => act(() => api(`/workflows/${seg(workflowId)}/versions/${seg(v.version)}/yank`, {method: "POST", body: {yanked: false}}))}, "Restore")
      : h("button", {type: "button", class: "yank", onclick: () => act(() => api(`/workflows/${seg(workflowId)}/versions/${seg(v.version)}/yank`, {method: "POST", body: {yanked: true}}))}, "Yank"))));

  const schema = inputSchema(chosen);
  const props = schema && schema.properties && typeof schema.properties === "object" ? schema.properties : null;
  const required = new Set(Array.isArray(schema && schema.required) ? schema.required : []);
  const formError = h("div", {class: "error", id: "run-form-error", role: "alert"});
  const form = h("form", {id: "run-form", class: "run-form", onsubmit: async (e) => {
    e.preventDefault();
    clear(formError);
    let inputs;
    try { inputs = readForm(form, props); } catch (err) { formError.append(`inputs: ${err.message}`); return; }
    try {
      const r = await api(`/workflows/${seg(workflowId)}/runs`, {method: "POST", body: {inputs, version: chosen.version}});
      location.hash = `#/runs/${seg(r.run_id)}`;
    } catch (err) {
      formError.append(err.message);
      const problems = err.body && (err.body.problems || err.body.errors);
      if (Array.isArray(problems)) {
        formError.append(h("ul", {id: "run-form-problems"}, problems.map((p) => h("li", {},
          p && typeof p === "object" && "path" in p ? `${p.path}: ${p.message}` : JSON.stringify(p)))));
      }
    }
  }},
  props ? Object.entries(props).map(([name, prop]) => fieldFor(name, prop || {}, required.has(name)))
    : h("div", {class: "field"}, h("label", {for: "in-json"}, "Inputs (a JSON object)"),
      h("textarea", {id: "in-json", name: "inputs", rows: 4}, "{}")),
  formError,
  h("button", {type: "submit", id: "run-submit"}, `Run ${chosen.version}`));

  const graphBox = h("div", {class: "graph"});
  fill(main, 
    h("h1", {}, "Workflow ", h("span", {class: "mono"}, workflowId)),
    h("p", {class: "subtitle"}, "latest ", h("strong", {id: "latest"}, wf.latest), " ",
      h("a", {href: `#/runs?workflow_id=${encodeURIComponent(workflowId)}`}, "runs"), " ",
      h("button", {type: "button", id: "rollback", onclick: () => act(() => api(`/workflows/${seg(workflowId)}/rollback`, {method: "POST"}))},
        "Roll back the latest")),
    h("h2", {}, "Versions"),
    h("div", {class: "scroll"}, h("table", {"aria-label": "Versions"},
      h("thead", {}, h("tr", {}, ["Version", "Registered", "Runnable", "Uses", ""].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {id: "versions"}, versionRows))),
    h("h2", {}, "Dependents"),
    (wf.dependents || []).length ? h("ul", {id: "dependents"}, wf.dependents.map((d) => h("li", {},
      h("a", {href: `#/workflows/${seg(d.workflow_id)}`}, d.workflow_id), ` ${d.version} uses ${d.version_range}`)))
      : h("p", {class: "muted"}, "No workflow uses this one."),
    h("h2", {}, `Run ${chosen.version}`), form,
    h("h2", {}, `Graph of ${chosen.version}`), h("div", {class: "scroll graph-scroll"}, graphBox),
    h("h2", {}, "Spec"), jsonBlock(chosen.spec, "Spec"),
  );
  if (chosen.spec) new Graph(graphBox, specNodes(chosen.spec), {onSelect: () => {}});
}
