"""Web UI benchmark: the runs list of a store with 100,000 runs, and a 1,000-node run page in
headless chromium (Playwright; Debian's /usr/bin/chromium).

    python benches/bench_ui.py [--runs N] [--nodes N] [--repeats N]

1. ``GET /runs`` (the list page's request, 50 a page) over HTTP against an orchestrator whose
   SQLite store holds ``--runs`` finished runs of 10 workflows: the first page, a keyset page
   deep in the list (``before=``), the same depth by ``offset``, and filtered by status,
   workflow and a time window. Median and p95 of ``--repeats`` requests each, over loopback,
   one keep-alive connection.
2. The run page of a finished ``--nodes``-node layered DAG (layers of 25, each node with up to
   3 parents in the layer before): from navigation to every node drawn in its final state
   (the page fetches the run and the spec, lays the graph out, draws it and replays the run's
   ~3 events per node), and the layout + SVG drawing alone (``new Graph`` in the page).
3. A live run of ``--nodes`` Lua nodes that each spin a little, watched from its start: the
   events per second the server sent, the events the page applied (it must apply every one),
   and how long after the run's end the page showed it finished.

Timings are printed, never asserted. Targets (issue 21): the run page of a 1,000-node DAG drawn
in <= 1 s and keeping up with 200 events/s without dropping any; the runs list in <= 50 ms
with 100,000 runs in the store.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def fill_store(path: Path, runs: int) -> list[str]:
    from dagengine.orchestrator.store import RunRecord, Store

    store = Store(str(path))
    ids = []
    start = time.time() - runs  # one a second, oldest first
    rng = random.Random(7)
    for i in range(runs):
        run_id = RunRecord.new_id()
        ids.append(run_id)
        store.create_run_later(
            RunRecord(
                run_id=run_id,
                workflow_id=f"wf{i % 10}",
                version="1.0.0",
                status=rng.choice(["succeeded", "succeeded", "succeeded", "failed", "cancelled"]),
                attempt=1,
                engine_id="local",
                created_at=start + i,
                started_at=start + i,
                finished_at=start + i + 0.5,
            )
        )
        if i % 5000 == 4999:
            store.flush()
    store.flush()
    store.close()
    return ids


def timed(client: httpx.Client, path: str, params: dict[str, Any], repeats: int) -> list[float]:
    client.get(path, params=params).raise_for_status()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer = client.get(path, params=params)
        out.append(time.perf_counter() - t0)
        answer.raise_for_status()
    return out


def fmt(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms"


def layered_spec(n: int, width: int = 25, seed: int = 3) -> dict[str, Any]:
    rng = random.Random(seed)
    nodes: list[dict[str, Any]] = []
    for i in range(n):
        layer = i // width
        deps: list[str] = []
        if layer:
            prev = list(range((layer - 1) * width, layer * width))
            deps = [f"n{j}" for j in sorted(rng.sample(prev, min(3, len(prev))))]
        nodes.append({"id": f"n{i}", "deps": deps, "noop": True})
    return {"id": "big", "version": "1.0.0", "nodes": nodes}


def spin_spec(n: int) -> dict[str, Any]:
    code = "local x = 0 for i = 1, 300000 do x = x + i end return {x = x}"
    nodes = [{"id": f"s{i}", "lua": code} for i in range(n)]
    return {"id": "spin", "version": "1.0.0", "nodes": nodes}


def stored_events(orch: Any, run_id: str) -> list[Any]:
    from dagengine.orchestrator.monitor import Monitor

    monitor = Monitor(orch)
    try:
        return monitor.history(0, run_id=run_id, limit=1_000_000)
    finally:
        monitor.close()


#: Every event applied: the page's counter shows the number the store holds.
ALL_APPLIED = """(count) => {
  const shown = document.querySelector('#event-count');
  return shown && shown.textContent === `${count} events`;
}"""

ALL_DONE = """([n, state]) => {
  const done = document.querySelectorAll(`svg.dag g.node[data-state="${state}"]`).length;
  const status = document.querySelector('#run-status');
  return done === n && status && status.dataset.status === 'succeeded';
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    from dagengine.api import ServerThread, create_app
    from dagengine.orchestrator import Orchestrator

    tmp = Path(tempfile.mkdtemp(prefix="dagengine-bench-ui-"))
    store = tmp / "store.db"
    t0 = time.perf_counter()
    ids = fill_store(store, args.runs)
    print(f"store: {args.runs:,} runs written in {time.perf_counter() - t0:.1f} s ({store})")
    orch = Orchestrator(store=str(store))
    app = create_app(orch)
    server = ServerThread(app).start()
    client = httpx.Client(base_url=server.url, timeout=60)
    try:
        print(f"\n1. GET /runs, 50 a page, {args.runs:,} runs in the store")
        deep = ids[len(ids) // 2]
        middle = orch.store.get_run(deep).created_at  # type: ignore[union-attr]
        cases = [
            ("first page", {"limit": 50}),
            ("keyset page at the middle (before=)", {"limit": 50, "before": deep}),
            ("offset page at the middle (offset=)", {"limit": 50, "offset": len(ids) // 2}),
            ("status=failed", {"limit": 50, "status": "failed"}),
            ("workflow_id=wf3", {"limit": 50, "workflow_id": "wf3"}),
            ("workflow_id=wf3 keyset at the middle", {"limit": 50, "workflow_id": "wf3",
                                                       "before": deep}),
            ("a one-hour window at the middle", {"limit": 50, "since": middle - 3600,
                                                 "until": middle}),
        ]  # fmt: skip
        for name, params in cases:
            print(f"  {name:<40} {fmt(timed(client, '/runs', params, args.repeats))}")

        orch.register_workflow("big", "1.0.0", layered_spec(args.nodes))
        big = client.post("/workflows/big/runs", json={"wait": True}).json()
        assert big["status"] == "succeeded", big
        orch.register_workflow("spin", "1.0.0", spin_spec(args.nodes))

        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url + "/ui/#/engines")
            page.wait_for_selector("#engines-body tr")
            print(f"\n2. run page of a finished {args.nodes}-node DAG")
            loads = []
            applied_too = []
            total = len(stored_events(orch, big["run_id"]))
            for _ in range(5):
                page.goto(server.url + "/ui/#/engines")
                page.wait_for_selector("#engines-body tr")
                t0 = time.perf_counter()
                page.goto(f"{server.url}/ui/#/runs/{big['run_id']}")
                page.wait_for_function(ALL_DONE, arg=[args.nodes, "succeeded"], polling="raf",
                                       timeout=60_000)  # fmt: skip
                loads.append(time.perf_counter() - t0)
                page.wait_for_function(ALL_APPLIED, arg=total, polling="raf", timeout=60_000)
                applied_too.append(time.perf_counter() - t0)
            print(f"  navigation to all nodes drawn final      {fmt(loads)}")
            print(f"  ... and its {total:,} events replayed     {fmt(applied_too)}")
            draws = page.evaluate(
                """async (n) => {
                  const {Graph, specNodes} = await import('/ui/js/graph.js');
                  const wf = await (await fetch('/workflows/big')).json();
                  const nodes = specNodes(wf.versions[0].spec);
                  const out = [];
                  for (let i = 0; i < 7; i++) {
                    const box = document.createElement('div');
                    document.body.append(box);
                    const t0 = performance.now();
                    new Graph(box, nodes, {});
                    box.getBoundingClientRect();  // force layout of the new SVG
                    out.push(performance.now() - t0);
                    box.remove();
                  }
                  return out;
                }""",
                args.nodes,
            )
            print(f"  layout + SVG drawing alone               {fmt([d / 1000 for d in draws])}")

            print(f"\n3. a live run of {args.nodes} spinning Lua nodes, watched from its start")
            page.goto(server.url + "/ui/#/engines")
            page.wait_for_selector("#engines-body tr")
            live = client.post("/workflows/spin/runs", json={}).json()
            page.goto(f"{server.url}/ui/#/runs/{live['run_id']}")
            page.wait_for_function(ALL_DONE, arg=[args.nodes, "succeeded"], polling="raf",
                                   timeout=120_000)  # fmt: skip
            seen_done = time.time()
            run = client.get(f"/runs/{live['run_id']}").json()
            events = stored_events(orch, live["run_id"])
            span = events[-1].time - events[0].time
            applied = int(page.locator("#event-count").inner_text().split()[0])
            rate = len(events) / span
            print(f"  events sent {len(events):,} over {span:.2f} s: {rate:,.0f} events/s")
            print(f"  events applied by the page: {applied:,} (dropped: {len(events) - applied})")
            print(f"  page showed the end {max(0.0, seen_done - run['finished_at']) * 1000:.0f} ms "
                  "after the run finished (upper bound: includes the poll)")  # fmt: skip
            browser.close()
    finally:
        client.close()
        server.stop()
        app.state.api.close()
        orch.stop()


if __name__ == "__main__":
    main()
