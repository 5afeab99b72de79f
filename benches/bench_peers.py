"""A peer users would pick instead, side by side: dask.distributed against dagengine's
orchestrator, on the same small workflows, in one run.

    python benches/bench_peers.py [--runs N] [--solo N] [--rounds R] [--quick]

The workflow: a chain of 3 trivial Python tasks per run (``a -> b -> c``, each adds one to
its parent's value).

* **dagengine**: an :class:`~dagengine.orchestrator.Orchestrator` (SQLite store on disk: every
  run, node output and event persisted) with two ``dagengine engine`` processes (static
  discovery); the tasks are ``python:`` nodes the engines import. The runs at once are
  started with ``execute_workflow_async`` from one event loop, as ``client.submit`` starts
  dask's (no wait for each); a second row starts them with ``execute_workflow(wait=False)``,
  which returns once each run is committed: a commit per run, for reference.
* **dask.distributed**: a ``LocalCluster`` with two worker processes (one thread each, the
  engines' Python nodes also run one at a time per process under the GIL) and a ``Client``;
  a run is three chained ``client.submit`` calls (``pure=False``), its result the last one's.

Rows: ``--runs`` runs submitted at once, then waited for (throughput), and ``--solo`` runs one
at a time (p50 latency of a lone run). Both peers are started once and loaded in turn,
``--rounds`` times, which one goes first alternating: the ratios are the medians of the pairs'
ratios, so a drift of the shared machine's load between the two does not decide them. Targets
(issue 20): dagengine >= 5x dask.distributed's throughput and <= 1/10 of its p50 latency,
printed as met / NOT MET.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


class Dagengine:
    """The orchestrator (SQLite store on disk) with two engine processes, kept up for every
    round."""

    name = "dagengine orchestrator + 2 engines"

    def __init__(self, folder: Path) -> None:
        from dagengine.orchestrator import Config, Orchestrator

        sys.path.insert(0, str(folder))  # the orchestrator binds the spec: its imports resolve
        self.engines = [start_engine(f"peer-{i}", folder) for i in range(2)]
        config = Config(
            store_path=str(folder / "store.db"),
            discovery="static",
            engines=tuple(addr for _, addr in self.engines),
        )
        self.orch = Orchestrator.from_config(config, grpc_port=None)
        wait_for_engines(self.orch, 2)
        self.orch.register_workflow("peer-chain", "1.0.0", SPEC)
        self.rounds = 0
        for i in range(100):  # warm-up: imports on the engines, connections, caches
            self.orch.execute_workflow("peer-chain", {"n": i}, key=f"w{i}")

    def measure(self, runs: int, solo: int) -> tuple[float, float]:
        """(runs/s of ``runs`` at once, p50 s of ``solo`` one at a time). The runs are
        started as dask's ``client.submit`` starts its tasks, all at once without waiting for
        each: :meth:`~Orchestrator.execute_workflow_async` from one event loop (each run is
        committed with the store's next group, and its result reported once it is)."""
        self.rounds += 1
        tag = self.rounds

        async def batch() -> list[Any]:
            return await asyncio.gather(
                *(
                    self.orch.execute_workflow_async("peer-chain", {"n": i}, key=f"r{tag}-{i}")
                    for i in range(runs)
                )
            )

        started = time.perf_counter()
        for i, result in enumerate(asyncio.run(batch())):
            if not result.ok or result.outputs["c"]["v"] != i + 3:
                raise SystemExit(f"dagengine run {i} went wrong: {result.error}")
        rate = runs / (time.perf_counter() - started)
        latencies = []
        for i in range(solo):
            t0 = time.perf_counter()
            self.orch.execute_workflow("peer-chain", {"n": i}, key=f"s{tag}-{i}")
            latencies.append(time.perf_counter() - t0)
        return rate, p50(latencies)

    def measure_durable(self, runs: int) -> float:
        """runs/s of ``runs`` started with ``execute_workflow(wait=False)`` from one thread:
        each call returns once its run is committed, so every run pays a commit of its own
        (a guarantee dask's ``submit`` does not give: printed for reference)."""
        from dagengine.orchestrator import RunHandle

        self.rounds += 1
        tag = self.rounds
        started = time.perf_counter()
        handles = []
        for i in range(runs):
            handle = self.orch.execute_workflow(
                "peer-chain", {"n": i}, wait=False, key=f"d{tag}-{i}"
            )
            assert isinstance(handle, RunHandle)
            handles.append(handle)
        for i, handle in enumerate(handles):
            result = handle.result()
            if not result.ok or result.outputs["c"]["v"] != i + 3:
                raise SystemExit(f"dagengine run {i} went wrong: {result.error}")
        return runs / (time.perf_counter() - started)

    def close(self) -> None:
        self.orch.stop()
        for proc, _ in self.engines:
            proc.kill()
            proc.wait()


class Dask:
    """A ``LocalCluster`` of two worker processes and its ``Client``, kept up for every
    round."""

    name = "dask.distributed LocalCluster (2 procs)"

    def __init__(self) -> None:
        from dask.distributed import Client, LocalCluster

        # Its workers' lines at shutdown (closed comms, heartbeats) are not the bench's.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
        self.client = Client(self.cluster)  # type: ignore[no-untyped-call]
        self.client.gather([self.chain(i) for i in range(100)])  # warm-up

    def chain(self, n: int) -> object:
        a = self.client.submit(inc, n, pure=False)
        b = self.client.submit(inc, a, pure=False)
        return self.client.submit(inc, b, pure=False)

    def measure(self, runs: int, solo: int) -> tuple[float, float]:
        started = time.perf_counter()
        futures = [self.chain(i) for i in range(runs)]
        values = self.client.gather(futures)
        if values != [i + 3 for i in range(runs)]:
            raise SystemExit("dask runs went wrong")
        rate = runs / (time.perf_counter() - started)
        latencies = []
        for i in range(solo):
            t0 = time.perf_counter()
            self.chain(i).result()  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - t0)
        return rate, p50(latencies)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
        self.cluster.close()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs submitted at once")
    parser.add_argument("--solo", type=int, default=300, help="runs one at a time")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of loads, alternating")
    parser.add_argument("--quick", action="store_true", help="500 at once, 100 one at a time")
    args = parser.parse_args(argv)
    runs, solo = (500, 100) if args.quick else (args.runs, args.solo)
    rounds = 1 if args.quick else args.rounds
    de_rows: list[tuple[float, float]] = []
    dk_rows: list[tuple[float, float]] = []
    durable: list[float] = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "peer_tasks.py").write_text(TASKS)
        de = dk = None
        try:
            de, dk = Dagengine(folder), Dask()
            for round_no in range(rounds):
                # Both peers stay up; which one is loaded first alternates, so each pair
                # sees the same load of the (shared) machine.
                order = [(de, de_rows), (dk, dk_rows)]
                for peer, rows in order if round_no % 2 == 0 else order[::-1]:
                    rows.append(peer.measure(runs, solo))
                durable.append(de.measure_durable(runs))
                loads.append(os.getloadavg()[0])
        finally:
            for peer in (dk, de):
                if peer is not None:
                    peer.close()
    med = statistics.median
    print("\n== peers: a chain of 3 trivial Python tasks per run, two worker processes each ==")
    print(
        f"{rounds} rounds, the peers alternating (medians; ratios: median of the pair ratios); "
        f"load average {min(loads):.1f}-{max(loads):.1f}"
    )
    print(f"{'':40} {'runs/s (' + str(runs) + ' at once)':>24} {'p50 one at a time':>18}")
    for peer_name, rows in ((Dagengine.name, de_rows), (Dask.name, dk_rows)):
        rate, lat = med(r for r, _ in rows), med(p for _, p in rows)
        print(f"{peer_name:40} {rate:24.0f} {lat * 1e3:15.2f} ms")
    print(
        f"{'  each run committed before the next':40} {med(durable):24.0f}"
        "   (execute_workflow(wait=False) in a loop)"
    )
    thr = [d[0] / k[0] for d, k in zip(de_rows, dk_rows, strict=True)]
    lat = [k[1] / d[1] for d, k in zip(de_rows, dk_rows, strict=True)]
    for what, values, target in (
        ("throughput, x dask.distributed's", thr, 5.0),
        ("p50 latency, x lower than dask.distributed's", lat, 10.0),
    ):
        value = med(values)
        verdict = "met" if value >= target else "NOT MET"
        print(
            f"{what}: {value:.1f}x (pairs {min(values):.1f}-{max(values):.1f}; "
            f"target >= {target:.0f}x): {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
