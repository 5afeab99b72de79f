"""A peer users would pick instead, side by side: dask.distributed against dagengine's
orchestrator, on the same small workflows, in one run.

    python benches/bench_peers.py [--runs N] [--solo N] [--quick]

The workflow: a chain of 3 trivial Python tasks per run (``a -> b -> c``, each adds one to
its parent's value).

* **dagengine**: an :class:`~dagengine.orchestrator.Orchestrator` (SQLite store on disk: every
  run, node output and event persisted) with two ``dagengine engine`` processes (static
  discovery); the tasks are ``python:`` nodes the engines import.
* **dask.distributed**: a ``LocalCluster`` with two worker processes (one thread each, the
  engines' Python nodes also run one at a time per process under the GIL) and a ``Client``;
  a run is three chained ``client.submit`` calls (``pure=False``), its result the last one's.

Rows: ``--runs`` runs submitted at once, then waited for (throughput), and ``--solo`` runs one
at a time (p50 latency of a lone run). Targets (issue 20): dagengine >= 5x dask.distributed's
throughput and <= 1/10 of its p50 latency, printed as met / NOT MET.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_service import start_engine, wait_for_engines

TASKS = """
def a(ctx):
    return {"v": int(ctx.inputs.get("n", 0)) + 1}

def b(ctx):
    return {"v": ctx.results["a"]["v"] + 1}

def c(ctx):
    return {"v": ctx.results["b"]["v"] + 1}
"""
SPEC = {
    "nodes": [
        {"id": "a", "python": "peer_tasks:a"},
        {"id": "b", "deps": ["a"], "python": "peer_tasks:b"},
        {"id": "c", "deps": ["b"], "python": "peer_tasks:c"},
    ]
}


def inc(x: int) -> int:
    """The dask task: the same work as a node (one addition)."""
    return x + 1


def p50(values: list[float]) -> float:
    return statistics.median(values)


def bench_dagengine(runs: int, solo: int, folder: Path) -> tuple[float, float]:
    from dagengine.orchestrator import Config, Orchestrator, RunHandle

    sys.path.insert(0, str(folder))  # the orchestrator binds the spec: its imports resolve
    engines = [start_engine(f"peer-{i}", folder) for i in range(2)]
    orch = None
    try:
        config = Config(
            store_path=str(folder / "store.db"),
            discovery="static",
            engines=tuple(addr for _, addr in engines),
        )
        orch = Orchestrator.from_config(config, grpc_port=None)
        wait_for_engines(orch, 2)
        orch.register_workflow("peer-chain", "1.0.0", SPEC)
        for i in range(100):  # warm-up: imports on the engines, connections, caches
            orch.execute_workflow("peer-chain", {"n": i}, key=f"w{i}")
        started = time.perf_counter()
        handles = []
        for i in range(runs):
            handle = orch.execute_workflow("peer-chain", {"n": i}, wait=False, key=f"r{i}")
            assert isinstance(handle, RunHandle)
            handles.append(handle)
        for i, handle in enumerate(handles):
            result = handle.result()
            if not result.ok or result.outputs["c"]["v"] != i + 3:
                raise SystemExit(f"dagengine run {i} went wrong: {result.error}")
        rate = runs / (time.perf_counter() - started)
        latencies = []
        for i in range(solo):
            t0 = time.perf_counter()
            orch.execute_workflow("peer-chain", {"n": i}, key=f"s{i}")
            latencies.append(time.perf_counter() - t0)
        return rate, p50(latencies)
    finally:
        if orch is not None:
            orch.stop()
        for proc, _ in engines:
            proc.kill()
            proc.wait()


def bench_dask(runs: int, solo: int) -> tuple[float, float]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):

        def chain(n: int) -> object:
            a = client.submit(inc, n, pure=False)
            b = client.submit(inc, a, pure=False)
            return client.submit(inc, b, pure=False)

        client.gather([chain(i) for i in range(100)])  # warm-up
        started = time.perf_counter()
        futures = [chain(i) for i in range(runs)]
        values = client.gather(futures)
        if values != [i + 3 for i in range(runs)]:
            raise SystemExit("dask runs went wrong")
        rate = runs / (time.perf_counter() - started)
        latencies = []
        for i in range(solo):
            t0 = time.perf_counter()
            chain(i).result()  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - t0)
        return rate, p50(latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs submitted at once")
    parser.add_argument("--solo", type=int, default=300, help="runs one at a time")
    parser.add_argument("--quick", action="store_true", help="500 at once, 100 one at a time")
    args = parser.parse_args(argv)
    runs, solo = (500, 100) if args.quick else (args.runs, args.solo)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "peer_tasks.py").write_text(TASKS)
        de_rate, de_p50 = bench_dagengine(runs, solo, folder)
    dk_rate, dk_p50 = bench_dask(runs, solo)
    print("\n== peers: a chain of 3 trivial Python tasks per run, two worker processes each ==")
    print(f"{'':40} {'runs/s (' + str(runs) + ' at once)':>24} {'p50 one at a time':>18}")
    print(f"{'dagengine orchestrator + 2 engines':40} {de_rate:24.0f} {de_p50 * 1e3:15.2f} ms")
    print(f"{'dask.distributed LocalCluster (2 procs)':40} {dk_rate:24.0f} {dk_p50 * 1e3:15.2f} ms")
    thr, lat = de_rate / dk_rate, dk_p50 / de_p50
    for what, value, target in (
        ("throughput, x dask.distributed's", thr, 5.0),
        ("p50 latency, x lower than dask.distributed's", lat, 10.0),
    ):
        verdict = "met" if value >= target else "NOT MET"
        print(f"{what}: {value:.1f}x (target >= {target:.0f}x): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
