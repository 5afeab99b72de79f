"""Section 4: validation + topological order of a large random layered DAG (~3 parents a node).

Each contender runs in a fresh subprocess (this file, run as a script with ``--worker``) so that
its peak memory is its own. Inside the worker:

1. the graph is generated (fixed seed) as CSR lists, then turned into the contender's natural
   input (string ids + CSR for dagengine, per-node parent tuples for graphlib, an edge list of
   ``(parent, child)`` int tuples for networkx and rustworkx). That is "input prep", reported
   but not part of the timing;
2. the peak RSS is reset (``/proc/self/clear_refs``) and the current RSS read;
3. the timed call builds the graph, validates it (cycle check) and produces the full order;
4. the peak RSS is read again: peak growth / nodes is the "peak memory per node".

Timed calls:

* dagengine: ``_core.DagRef()`` + ``add_nodes_csr(ids, offsets, parents)`` (string ids, CSR
  parents as ``array('I')``) + ``preprocess()``
  + ``topological_order_indices()`` (node indices in a compact ``array('I')``, the
  counterpart of rustworkx's ``NodeIndices``; ``topological_order()`` would add a 1M-element
  list of id strings, about 110 B/node);
* graphlib: ``TopologicalSorter.add(i, *parents)`` per node + ``list(static_order())``;
* networkx: ``DiGraph.add_nodes_from`` + ``add_edges_from`` + ``list(topological_sort(g))``;
* rustworkx: ``PyDiGraph.add_nodes_from`` + ``add_edges_from_no_data`` + ``topological_sort``.

The time is the median of the repetitions; the memory is taken from the first one (later ones
can reuse pages the allocator kept, which would flatter them).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_common import (
    Config,
    Table,
    fmt_ratio,
    fmt_seconds,
    layered_csr,
    peak_rss_kib,
    ratio,
    reset_peak_rss,
    rss_kib,
)

CONTENDERS = ("dagengine", "rustworkx", "graphlib", "networkx")
PARENTS_PER_NODE = 3
LAYERS = 1000
#: Above this many nodes the slow contenders (graphlib, networkx) run once instead of 3 times.
SLOW_SINGLE_RUN = 500_000
WORKER_TIMEOUT_S = 1800


class Marks:
    """Phase boundaries of one timed call: seconds since the previous mark and the peak RSS
    (KiB) reached by then."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_kib: dict[str, int] = {}
        self._last = time.perf_counter()

    def start(self) -> None:
        """Start the clock of the first phase."""
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """End ``phase`` now."""
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self.peak_kib[phase] = peak_rss_kib()
        self._last = time.perf_counter()  # reading /proc is not charged to the next phase


# --- contenders (run inside the worker) -------------------------------------------------------


def prep_dagengine(n: int, offsets: list[int], parents: list[int]) -> tuple[Any, ...]:
    """String ids plus the CSR arrays (``array('I')``, which ``add_nodes_csr`` copies in
    bulk), as the bulk API takes them."""
    return ([f"n{i}" for i in range(n)], array("I", offsets), array("I", parents))


def run_dagengine(data: tuple[Any, ...], marks: Marks) -> int:
    """Bulk build, validate, order."""
    from dagengine import _core

    ids, offsets, parents = data
    marks.start()
    dag = _core.DagRef()
    dag.add_nodes_csr(ids, offsets, parents)
    marks.mark("build")
    dag.preprocess()
    marks.mark("validate")
    order = dag.topological_order_indices()
    marks.mark("order")
    return len(order)


def prep_parent_tuples(n: int, offsets: list[int], parents: list[int]) -> tuple[Any, ...]:
    """Per-node parent tuples (graphlib's ``add(node, *predecessors)``)."""
    return ([tuple(parents[offsets[i] : offsets[i + 1]]) for i in range(n)],)


def run_graphlib(data: tuple[Any, ...], marks: Marks) -> int:
    """``TopologicalSorter`` built node by node, then ``static_order`` (validates too)."""
    from graphlib import TopologicalSorter

    (deps,) = data
    marks.start()
    sorter: TopologicalSorter[int] = TopologicalSorter()
    for node, node_parents in enumerate(deps):
        sorter.add(node, *node_parents)
    marks.mark("build")
    order = list(sorter.static_order())
    marks.mark("validate+order")
    return len(order)


def prep_edges(n: int, offsets: list[int], parents: list[int]) -> tuple[Any, ...]:
    """Node list and ``(parent, child)`` edge tuples (networkx, rustworkx)."""
    edges = [(parents[j], i) for i in range(n) for j in range(offsets[i], offsets[i + 1])]
    return (list(range(n)), edges)


def run_networkx(data: tuple[Any, ...], marks: Marks) -> int:
    """``DiGraph`` + ``topological_sort`` (raises on a cycle)."""
    import networkx as nx

    nodes, edges = data
    marks.start()
    graph: Any = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    marks.mark("build")
    order = list(nx.topological_sort(graph))
    marks.mark("validate+order")
    return len(order)


def run_rustworkx(data: tuple[Any, ...], marks: Marks) -> int:
    """``PyDiGraph`` + ``topological_sort`` (raises ``DAGHasCycle``)."""
    import rustworkx as rx

    nodes, edges = data
    marks.start()
    graph = rx.PyDiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from_no_data(edges)
    marks.mark("build")
    order = rx.topological_sort(graph)
    marks.mark("validate+order")
    return len(order)


Prep = Callable[[int, list[int], list[int]], tuple[Any, ...]]
Run = Callable[[tuple[Any, ...], Marks], int]

WORKERS: dict[str, tuple[Prep, Run]] = {
    "dagengine": (prep_dagengine, run_dagengine),
    "graphlib": (prep_parent_tuples, run_graphlib),
    "networkx": (prep_edges, run_networkx),
    "rustworkx": (prep_edges, run_rustworkx),
}


@dataclass
class WorkerReport:
    """What one worker process measured (printed as one JSON line)."""

    contender: str
    nodes: int
    edges: int
    generate_s: float
    prep_s: float
    #: Whole timed call, one entry per repetition.
    seconds: list[float]
    #: Median seconds of each phase over the repetitions.
    phases: dict[str, float]
    #: RSS just before the first timed call, KiB.
    rss_before_kib: int
    #: Peak RSS growth by the end of each phase of the first timed call, KiB.
    phase_growth_kib: dict[str, int]
    #: False if the kernel would not reset VmHWM (growth is then over the earlier peak).
    hwm_reset: bool
    error: str | None = None

    @property
    def peak_growth_kib(self) -> int:
        """Peak RSS growth over the whole first timed call, KiB."""
        return max(self.phase_growth_kib.values(), default=0)


def timed_call(run: Run, data: tuple[Any, ...]) -> tuple[Marks, int, bool, int]:
    """One timed call after a collection and a peak-RSS reset: marks, RSS before, whether the
    reset worked, and the number of nodes ordered."""
    gc.collect()
    hwm_reset = reset_peak_rss()
    before = rss_kib() if hwm_reset else peak_rss_kib()
    marks = Marks()
    produced = run(data, marks)
    return marks, before, hwm_reset, produced


def worker(contender: str, n: int, seed: int, repeats: int) -> WorkerReport:
    """Generate, prepare, and time ``contender`` ``repeats`` times (memory from the first)."""
    prep, run = WORKERS[contender]
    t0 = time.perf_counter()
    offsets, parents = layered_csr(n, max(n // LAYERS, 1), PARENTS_PER_NODE, seed)
    t1 = time.perf_counter()
    data = prep(n, offsets, parents)
    edges = len(parents)
    if contender != "dagengine":
        del offsets, parents
    t2 = time.perf_counter()
    all_marks: list[Marks] = []
    before, hwm_reset = 0, False
    for i in range(repeats):
        marks, rss_before, reset, produced = timed_call(run, data)
        if produced != n:
            raise RuntimeError(f"{contender} ordered {produced} of {n} nodes")
        if i == 0:
            before, hwm_reset = rss_before, reset
        all_marks.append(marks)
    first = all_marks[0]
    return WorkerReport(
        contender=contender,
        nodes=n,
        edges=edges,
        generate_s=t1 - t0,
        prep_s=t2 - t1,
        seconds=[sum(m.seconds.values()) for m in all_marks],
        phases={
            phase: statistics.median(m.seconds[phase] for m in all_marks) for phase in first.seconds
        },
        rss_before_kib=before,
        phase_growth_kib={phase: kib - before for phase, kib in first.peak_kib.items()},
        hwm_reset=hwm_reset,
    )


def worker_main(argv: list[str]) -> None:
    """Entry point of the subprocess: print one JSON line with the :class:`WorkerReport`."""
    parser = argparse.ArgumentParser(description="one section-4 contender (internal)")
    parser.add_argument("--worker", choices=sorted(WORKERS), required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    report = worker(args.worker, args.nodes, args.seed, args.repeats)
    print(json.dumps(asdict(report)))


# --- the section (run in the main process) ----------------------------------------------------


def spawn_worker(contender: str, n: int, seed: int, repeats: int) -> WorkerReport:
    """Run one contender in a fresh interpreter and parse its report."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--worker={contender}",
        f"--nodes={n}",
        f"--seed={seed}",
        f"--repeats={repeats}",
    ]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return failed_report(contender, n, f"timed out after {WORKER_TIMEOUT_S} s")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return failed_report(contender, n, lines[-1])
    return WorkerReport(**json.loads(proc.stdout.strip().splitlines()[-1]))


def failed_report(contender: str, n: int, error: str) -> WorkerReport:
    """A report for a worker that did not finish."""
    return WorkerReport(contender, n, 0, 0.0, 0.0, [], {}, 0, {}, False, error=error)


@dataclass
class TopoResult:
    """One contender's figures; ``vs_dagengine`` is its time / dagengine's time."""

    contender: str
    nodes: int
    edges: int
    seconds: float | None
    bytes_per_node: float | None
    prep_s: float
    phases: dict[str, float]
    #: Peak growth reached by the end of each phase, bytes per node.
    phase_bytes_per_node: dict[str, float]
    vs_dagengine: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def summarize(report: WorkerReport) -> TopoResult:
    """Median time and per-node peak memory of one worker."""
    ok = report.error is None and report.seconds
    return TopoResult(
        contender=report.contender,
        nodes=report.nodes,
        edges=report.edges,
        seconds=statistics.median(report.seconds) if ok else None,
        bytes_per_node=report.peak_growth_kib * 1024 / report.nodes if ok else None,
        prep_s=report.prep_s,
        phases=report.phases,
        phase_bytes_per_node={
            phase: kib * 1024 / report.nodes for phase, kib in report.phase_growth_kib.items()
        },
        vs_dagengine=None,
        error=report.error,
    )


def repeats_for(contender: str, n: int, cfg: Config) -> int:
    """3 timed runs, but only 1 for the slow pure-Python contenders on big graphs."""
    slow = contender in ("graphlib", "networkx") and n >= SLOW_SINGLE_RUN
    return 1 if slow or cfg.repeats < 3 else 3


def phases_text(phases: dict[str, float]) -> str:
    """``build 0.12 s + validate ...`` for the notes column."""
    return " + ".join(f"{name.replace('_', '+')} {fmt_seconds(s)}" for name, s in phases.items())


def section_topo(cfg: Config) -> list[TopoResult]:
    """Section 4: spawn a worker per contender, print the table, return the figures."""
    n = cfg.topo_nodes
    results = []
    for contender in CONTENDERS:
        print(f"  … {contender} ({n:,} nodes)", file=sys.stderr, flush=True)
        report = spawn_worker(contender, n, cfg.seed, repeats_for(contender, n, cfg))
        results.append(summarize(report))
    ours = results[0].seconds
    for r in results:
        r.vs_dagengine = ratio(r.seconds, ours)
    print_topo_table(results, n)
    return results


def print_topo_table(results: list[TopoResult], n: int) -> None:
    """The side-by-side table of section 4."""
    edges = next((r.edges for r in results if r.edges), 0)
    table = Table(
        f"4. validation + topological order, random layered DAG: {n:,} nodes, {edges:,} edges",
        [
            "contender",
            "build+validate+order",
            "vs dagengine",
            "peak B/node",
            "input prep",
            "phases",
        ],
    )
    for r in results:
        if r.error is not None:
            table.add(r.contender, "failed", "—", "—", "—", r.error[:60])
            continue
        table.add(
            r.contender,
            fmt_seconds(r.seconds),
            fmt_ratio(r.vs_dagengine),
            f"{r.bytes_per_node:,.0f}" if r.bytes_per_node is not None else "—",
            fmt_seconds(r.prep_s),
            phases_text(r.phases),
        )
    table.notes.append(
        "each contender in a fresh process; time = median (1 run for graphlib/networkx at "
        f"≥{SLOW_SINGLE_RUN:,} nodes, else 3); vs dagengine = contender time / dagengine time"
    )
    table.notes.append(
        "peak B/node = growth of peak RSS (VmHWM, reset before the call) during the timed "
        "call / nodes; input prep (building the Python lists) is not timed"
    )
    ours = results[0]
    if ours.error is None and ours.phase_bytes_per_node:
        steps = ", ".join(f"{k} {v:,.0f}" for k, v in ours.phase_bytes_per_node.items())
        table.notes.append(f"dagengine peak B/node reached by the end of each phase: {steps}")
    table.print()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
