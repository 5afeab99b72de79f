// The DAG as an SVG: a layered layout computed here from the spec (layers by longest path
// from the roots, left to right; order within a layer by the barycentre of the neighbours,
// one sweep down and one up), nodes coloured by state. Updates touch only the changed
// nodes' classes and labels, so a large run keeps up with a fast event stream.

import {s} from "./dom.js";

const W = 168;
const H = 40;
const GAP_X = 64;
const GAP_Y = 14;
const PAD = 16;
const MAX_LABEL = 20;

/** Nodes of a spec: [{id, deps}] (deps that name no node are dropped). */
export function specNodes(spec) {
  const nodes = Array.isArray(spec && spec.nodes) ? spec.nodes : [];
  const ids = new Set(nodes.map((n) => String(n.id)));
  return nodes.map((n) => ({
    id: String(n.id),
    deps: (Array.isArray(n.deps) ? n.deps : []).map(String).filter((d) => ids.has(d)),
    kind: ["lua", "python", "workflow", "noop"].find((k) => k in n) || "node",
    when: typeof n.when === "string" ? n.when : null,
    map: typeof n.map === "string" ? n.map : null,
  }));
}

/** Layer and order of each node: {place: Map id -> {layer, row}, layers}. */
export function layout(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const children = new Map(nodes.map((n) => [n.id, []]));
  const indegree = new Map(nodes.map((n) => [n.id, n.deps.length]));
  for (const n of nodes) for (const d of n.deps) children.get(d).push(n.id);
  const layer = new Map();
  const queue = nodes.filter((n) => n.deps.length === 0).map((n) => n.id);
  for (const id of queue) layer.set(id, 0);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    for (const child of children.get(id)) {
      layer.set(child, Math.max(layer.get(child) || 0, layer.get(id) + 1));
      indegree.set(child, indegree.get(child) - 1);
      if (indegree.get(child) === 0) queue.push(child);
    }
  }
  for (const n of nodes) if (!layer.has(n.id)) layer.set(n.id, 0); // a cycle: never in a spec
  const layers = [];
  nodes.forEach((n, index) => {
    const l = layer.get(n.id);
    (layers[l] = layers[l] || []).push({id: n.id, index});
  });
  const row = new Map();
  const renumber = (items) => items.forEach((item, r) => row.set(item.id, r));
  layers.forEach(renumber);
  const sweep = (items, neighbours) => {
    const key = (item) => {
      const ns = neighbours(item.id);
      return ns.length ? ns.reduce((a, id) => a + row.get(id), 0) / ns.length : row.get(item.id);
    };
    const keyed = items.map((item) => ({item, k: key(item)}));
    keyed.sort((a, b) => a.k - b.k || a.item.index - b.item.index);
    renumber(keyed.map((x) => x.item));
    return keyed.map((x) => x.item);
  };
  for (let l = 1; l < layers.length; l++) layers[l] = sweep(layers[l], (id) => byId.get(id).deps);
  for (let l = layers.length - 2; l >= 0; l--) layers[l] = sweep(layers[l], (id) => children.get(id));
  const place = new Map();
  layers.forEach((items, l) => items.forEach((item, r) => place.set(item.id, {layer: l, row: r})));
  return {place, layers};
}

function label(id) {
  return id.length > MAX_LABEL ? `${id.slice(0, MAX_LABEL - 1)}…` : id;
}

export class Graph {
  /** Draw `nodes` ([{id, deps}]) into `container`; onSelect(id) on a click or Enter. */
  constructor(container, nodes, {onSelect} = {}) {
    this.onSelect = onSelect;
    this.nodes = new Map();
    this.selected = null;
    const {place, layers} = layout(nodes);
    const tallest = Math.max(1, ...layers.map((l) => l.length));
    const width = PAD * 2 + layers.length * W + Math.max(0, layers.length - 1) * GAP_X;
    const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
    const at = (id) => {
      const p = place.get(id);
      const offset = ((tallest - layers[p.layer].length) * (H + GAP_Y)) / 2;
      return {x: PAD + p.layer * (W + GAP_X), y: PAD + offset + p.row * (H + GAP_Y)};
    };
    const edges = s("g", {class: "edges"});
    const boxes = s("g", {class: "nodes"});
    for (const n of nodes) {
      const to = at(n.id);
      for (const d of n.deps) {
        const from = at(d);
        const x1 = from.x + W;
        const y1 = from.y + H / 2;
        const x2 = to.x;
        const y2 = to.y + H / 2;
        const mid = (x1 + x2) / 2;
        edges.append(s("path", {d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`}));
      }
      const notes = [n.when ? `when: ${n.when}` : "", n.map ? `map: ${n.map}` : ""].filter(Boolean);
      const title = s("title", {}, [n.id, ...notes].join("\n"));
      const name = s("text", {x: 10, y: 16, class: "name"}, label(n.id));
      const sub = s("text", {x: 10, y: 31, class: "sub"}, "pending");
      const g = s(
        "g",
        {
          class: "node st-pending",
          transform: `translate(${to.x},${to.y})`,
          tabindex: "0",
          role: "button",
          "aria-label": `node ${n.id}: pending`,
          "data-node": n.id,
        },
        title,
        s("rect", {width: W, height: H, rx: 6, ry: 6}),
        name,
        sub,
      );
      const select = () => this.select(n.id);
      g.addEventListener("click", select);
      g.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(); }
      });
      boxes.append(g);
      this.nodes.set(n.id, {g, sub, state: "pending", text: "pending"});
    }
    this.svg = s(
      "svg",
      {
        class: "dag",
        width,
        height,
        viewBox: `0 0 ${width} ${height}`,
        role: "group",
        "aria-label": `graph of ${nodes.length} nodes`,
      },
      s("defs"),
      edges,
      boxes,
    );
    container.append(this.svg);
  }

  /** Set a node's state (and the line under its id). */
  setState(id, state, text) {
    const node = this.nodes.get(id);
    if (!node) return;
    const shown = text || state;
    if (node.state !== state) {
      node.g.classList.remove(`st-${node.state}`);
      node.g.classList.add(`st-${state}`);
      node.g.dataset.state = state;
      node.state = state;
    }
    if (node.text !== shown) {
      node.sub.textContent = shown.length > 26 ? `${shown.slice(0, 25)}…` : shown;
      node.g.setAttribute("aria-label", `node ${id}: ${shown}`);
      node.text = shown;
    }
  }

  /** Show a mapped node's item counts ({done, failed, running, total}) as a bar. */
  setItems(id, {done, failed, running, total}) {
    const node = this.nodes.get(id);
    if (!node) return;
    if (!node.bar) {
      node.bar = {
        done: s("rect", {class: "bar-done", x: 0, y: H - 4, height: 4, width: 0}),
        failed: s("rect", {class: "bar-failed", x: 0, y: H - 4, height: 4, width: 0}),
      };
      node.g.append(node.bar.done, node.bar.failed);
      node.g.classList.add("mapped");
    }
    const part = (n) => (total > 0 ? (W * Math.min(n, total)) / total : 0);
    node.bar.done.setAttribute("width", String(part(done)));
    node.bar.failed.setAttribute("x", String(part(done)));
    node.bar.failed.setAttribute("width", String(part(failed)));
    node.g.dataset.items = `${done}/${failed}/${running}/${total}`;
  }

  select(id) {
    if (this.selected) this.nodes.get(this.selected)?.g.classList.remove("selected");
    this.selected = id;
    const node = this.nodes.get(id);
    if (node) node.g.classList.add("selected");
    if (this.onSelect) this.onSelect(id);
  }
}
