"""Sections 1 and 2: running whole DAGs of no-op and trivial-Python nodes.

Contenders, all on the same shapes:

* **dagengine**: the DAG is built once through the public API (``DAG.add_node`` +
  ``preprocess``, timed separately as "build+preprocess"); what is timed is ``dag.run()``,
  which includes turning the core's result into a :class:`dagengine.RunResult`.
* **graphlib + threads**: the standard ready-set loop: ``graphlib.TopologicalSorter`` over the
  same dependency mapping, every ready node submitted to a ``ThreadPoolExecutor`` (created once,
  default size), ``wait(FIRST_COMPLETED)``, ``done()`` for every finished node.
* **dask**: ``dask.threaded.get`` on the equivalent task-graph dict (``{key: (fn, *deps)}``),
  asking for the leaves, default thread pool.

The baselines have no cheaper "no-op" than calling a trivial function, so their workload is the
same in both sections; it is measured once per shape and reused.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from graphlib import TopologicalSorter
from typing import Any

from bench_common import (
    Config,
    Shape,
    Table,
    Timing,
    chain,
    fan,
    fmt_ratio,
    fmt_us,
    layered,
    measure,
    node_id,
    ratio,
)
from dagengine import DAG, Node, NodeContext, NoopExecutor, PythonExecutor

# --- the work each node does --------------------------------------------------------------------


def trivial(ctx: NodeContext) -> None:
    """The dagengine Python node: does nothing."""
    return None


def trivial_plain() -> None:
    """The graphlib + threads node: does nothing."""
    return None


def trivial_dask(*_parents: object) -> None:
    """The dask node: does nothing (dask passes the parents' results as arguments)."""
    return None


# --- shapes -----------------------------------------------------------------------------------


def narrow(n: int, *, k: int = 3, window: int = 200, seed: int) -> Shape:
    """A random narrow DAG: every node after the first picks ``k`` distinct parents among the
    ``window`` nodes before it (fixed ``seed``), so only a few nodes are ready at a time."""
    rng = random.Random(seed)
    parents: list[tuple[int, ...]] = [()]
    for i in range(1, n):
        low = max(0, i - window)
        parents.append(tuple(sorted(rng.sample(range(low, i), min(k, i - low)))))
    return Shape(f"random narrow {n:,} ({k} of the {window} before)", parents)


def run_shapes(cfg: Config) -> list[Shape]:
    """The four shapes of sections 1 and 2, sized by ``cfg.nodes``."""
    width = max(cfg.nodes // 100, 1)
    return [
        chain(cfg.nodes),
        fan(cfg.nodes),
        layered(cfg.nodes, width=width, k=3, seed=cfg.seed),
        narrow(cfg.nodes, seed=cfg.seed),
    ]


# --- dagengine --------------------------------------------------------------------------------


def build_dag(shape: Shape, make_executor: Callable[[], Any]) -> DAG:
    """The shape as a :class:`DAG` (public API), preprocessed."""
    ids = shape.ids()
    dag = DAG()
    for i, parents in enumerate(shape.parents):
        dag.add_node(Node(ids[i], [ids[p] for p in parents], make_executor()))
    return dag.preprocess()


def run_dag(dag: DAG, inputs: dict[str, Any] | None = None) -> None:
    """One ``dag.run()``; a failed run would make the timing meaningless, so it raises."""
    dag.run(inputs).raise_for_status()


@dataclass
class DagengineTiming:
    """dagengine's figures for one shape."""

    build: Timing
    run: Timing
    #: From ``start()`` until the core reports the run finished (no ``RunResult`` yet).
    core: Timing | None
    #: ``RunResult`` construction from the core's result dict.
    convert: Timing | None


def time_dagengine(
    shape: Shape, make_executor: Callable[[], Any], cfg: Config, inputs: dict[str, Any] | None
) -> DagengineTiming:
    """Build once (timed over a few builds), then time ``dag.run()`` and its two phases."""
    build = measure(lambda: build_dag(shape, make_executor), min(cfg.repeats, 3), 0)
    dag = build_dag(shape, make_executor)
    run = measure(lambda: run_dag(dag, inputs), cfg.repeats, cfg.warmup)
    core, convert = time_phases(dag, inputs, cfg.repeats)
    return DagengineTiming(build, run, core, convert)


def time_phases(
    dag: DAG, inputs: dict[str, Any] | None, repeats: int
) -> tuple[Timing | None, Timing | None]:
    """Split a run into "core" (start → finished) and "convert" (``RunResult`` built).

    Diagnostic only: it waits on the run's native handle (a private attribute), so it is
    skipped if the handle is not there.
    """
    core: list[float] = []
    convert: list[float] = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        handle = dag.start(inputs, events=False)
        native = getattr(handle, "_ref", None)
        if native is None or not hasattr(native, "wait"):
            handle.wait()
            return None, None
        while not native.wait(0.05):
            pass
        t1 = time.perf_counter()
        handle.wait().raise_for_status()
        t2 = time.perf_counter()
        core.append(t1 - t0)
        convert.append(t2 - t1)
    return Timing(tuple(core)), Timing(tuple(convert))


# --- graphlib + ThreadPoolExecutor ------------------------------------------------------------


def graphlib_graph(shape: Shape) -> dict[str, tuple[str, ...]]:
    """The shape as ``TopologicalSorter``'s mapping: node -> its predecessors."""
    ids = shape.ids()
    return {ids[i]: tuple(ids[p] for p in parents) for i, parents in enumerate(shape.parents)}


def run_graphlib(
    graph: dict[str, tuple[str, ...]], fn: Callable[[], object], pool: ThreadPoolExecutor
) -> int:
    """Run every node once, each after its parents; returns the number of nodes run."""
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    running: dict[Future[object], str] = {}
    finished_count = 0
    while sorter.is_active():
        for node in sorter.get_ready():
            running[pool.submit(fn)] = node
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
            sorter.done(running.pop(future))
            finished_count += 1
    return finished_count


def time_graphlib(shape: Shape, cfg: Config) -> Timing:
    """Median of ``run_graphlib`` (sorter construction included, pool creation not)."""
    graph = graphlib_graph(shape)
    with ThreadPoolExecutor() as pool:

        def once() -> None:
            if run_graphlib(graph, trivial_plain, pool) != shape.n:
                raise RuntimeError("graphlib baseline did not run every node")

        return measure(once, cfg.baseline_repeats, cfg.warmup)


# --- dask -------------------------------------------------------------------------------------


def dask_graph(shape: Shape) -> dict[str, tuple[Any, ...]]:
    """The shape as a dask task graph: ``{key: (fn, *parent_keys)}``."""
    ids = shape.ids()
    return {
        ids[i]: (trivial_dask, *(ids[p] for p in parents))
        for i, parents in enumerate(shape.parents)
    }


def time_dask(shape: Shape, cfg: Config) -> Timing:
    """Median of ``dask.threaded.get`` on the whole graph (asking for every leaf)."""
    import dask.threaded

    graph = dask_graph(shape)
    leaves = [node_id(i) for i in shape.leaves()]
    return measure(lambda: dask.threaded.get(graph, leaves), cfg.baseline_repeats, cfg.warmup)


# --- sections ---------------------------------------------------------------------------------

#: Baseline timings per shape name, shared by sections 1 and 2 (same workload for them).
_BASELINES: dict[str, tuple[Timing, Timing]] = {}


def baselines(shape: Shape, cfg: Config) -> tuple[Timing, Timing, bool]:
    """(graphlib+threads, dask) timings for ``shape``; the flag says they were reused."""
    cached = _BASELINES.get(shape.name)
    if cached is not None:
        return cached[0], cached[1], True
    result = (time_graphlib(shape, cfg), time_dask(shape, cfg))
    _BASELINES[shape.name] = result
    return result[0], result[1], False


@dataclass
class ShapeResult:
    """Per-node figures (µs) of one shape in one section; ratios are baseline / dagengine."""

    shape: str
    nodes: int
    edges: int
    dagengine_us: float
    build_us: float
    core_us: float | None
    convert_us: float | None
    graphlib_us: float
    dask_us: float
    vs_graphlib: float | None
    vs_dask: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def measure_shape(
    shape: Shape, make_executor: Callable[[], Any], cfg: Config
) -> tuple[ShapeResult, bool]:
    """All contenders on one shape."""
    ours = time_dagengine(shape, make_executor, cfg, None)
    graphlib_t, dask_t, reused = baselines(shape, cfg)
    n = shape.n
    run_us = ours.run.per_item_us(n)
    result = ShapeResult(
        shape=shape.name,
        nodes=n,
        edges=shape.edges,
        dagengine_us=run_us,
        build_us=ours.build.per_item_us(n),
        core_us=ours.core.per_item_us(n) if ours.core else None,
        convert_us=ours.convert.per_item_us(n) if ours.convert else None,
        graphlib_us=graphlib_t.per_item_us(n),
        dask_us=dask_t.per_item_us(n),
        vs_graphlib=ratio(graphlib_t.per_item_us(n), run_us),
        vs_dask=ratio(dask_t.per_item_us(n), run_us),
    )
    return result, reused


def shape_table(title: str, results: list[ShapeResult]) -> Table:
    """The side-by-side table of one section."""
    table = Table(
        title,
        [
            "shape",
            "dagengine",
            "core",
            "RunResult",
            "graphlib+threads",
            "dask",
            "vs graphlib",
            "vs dask",
            "build+preprocess",
        ],
    )
    for r in results:
        table.add(
            r.shape,
            fmt_us(r.dagengine_us),
            fmt_us(r.core_us),
            fmt_us(r.convert_us),
            fmt_us(r.graphlib_us),
            fmt_us(r.dask_us),
            fmt_ratio(r.vs_graphlib),
            fmt_ratio(r.vs_dask),
            fmt_us(r.build_us),
        )
    return table


def run_section(title: str, make_executor: Callable[[], Any], cfg: Config) -> list[ShapeResult]:
    """Measure every shape and print the section's table."""
    results: list[ShapeResult] = []
    any_reused = False
    for shape in run_shapes(cfg):
        result, reused = measure_shape(shape, make_executor, cfg)
        results.append(result)
        any_reused = any_reused or reused
    table = shape_table(title, results)
    table.notes.append(
        "µs per node, median; dagengine = dag.run(); core | RunResult = further runs split "
        "(start → core finished, then RunResult built); ratios = baseline / dagengine"
    )
    table.notes.append(
        "build+preprocess = DAG() + add_node(Node(...)) per node + preprocess(), µs per node"
    )
    if any_reused:
        table.notes.append("baselines: same workload as section 1, measured once and reused")
    table.print()
    return results


def section_noop(cfg: Config) -> list[ShapeResult]:
    """Section 1: no-op nodes (``NoopExecutor``, which never enters Python)."""
    return run_section("1. no-op nodes (µs/node)", NoopExecutor, cfg)


def section_python(cfg: Config) -> list[ShapeResult]:
    """Section 2: trivial Python nodes (``PythonExecutor(f)``, ``f(ctx)`` returns ``None``)."""
    executor = PythonExecutor(trivial)
    return run_section("2. trivial Python nodes (µs/node)", lambda: executor, cfg)
