"""Section 5: does memory grow across repeated runs of the same DAG?

Each DAG is built once and run ``cfg.memory_runs`` times (1,900 by default) with
``dag.run()``; the result of each run is dropped. After run 100, halfway through the rest and
after the last run a full collection runs and the process RSS (``VmRSS``) is read. The first
100 runs are the warm-up (thread pools, Lua state pools, chunk cache, allocator arenas reach
their size). The growth is the smaller of the two halves' growth: a leak climbs in both, while
a one-time step climbs in one. Such steps are the pools' threads: a thread the core's pools
start late (the 8th or 9th of the process, after 1,000-2,250 Lua runs here) takes its first
allocator segment, +2 MiB of RSS, and RSS falls again later; with two readings a step between
them read as growth in some full runs and not in others.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench_common import Config, Shape, Table, layered, rss_kib
from bench_dags import build_dag, run_dag, trivial
from bench_lua import LUA_BODY, VALUES
from dagengine import DAG, LuaExecutor, NoopExecutor, PythonExecutor

#: First RSS reading after this many runs.
WARM_RUNS = 100
#: Growth (KiB) of a half tolerated as allocator noise, not a leak: less than a byte per node
#: per run for the 1,000-node DAG over a half's 900 runs.
GROWTH_TOLERANCE_KIB = 512


@dataclass
class MemoryResult:
    """RSS of one DAG after ``WARM_RUNS``, halfway through the rest and after all runs."""

    dag: str
    nodes: int
    runs: int
    rss_warm_kib: int
    rss_mid_kib: int
    rss_end_kib: int

    @property
    def growth_kib(self) -> int:
        """RSS growth of the half that grew less (a leak grows both)."""
        return min(self.rss_mid_kib - self.rss_warm_kib, self.rss_end_kib - self.rss_mid_kib)

    @property
    def grew(self) -> bool:
        """True if the growth is beyond allocator noise."""
        return self.growth_kib > GROWTH_TOLERANCE_KIB

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "growth_kib": self.growth_kib}


def settled_rss_kib() -> int:
    """RSS after a full collection."""
    gc.collect()
    return rss_kib()


def mid_run(runs: int) -> int:
    """The run halfway between ``WARM_RUNS`` and ``runs``."""
    return WARM_RUNS + (runs - WARM_RUNS) // 2


def rss_across_runs(dag: DAG, inputs: dict[str, Any] | None, runs: int) -> tuple[int, int, int]:
    """Run ``dag`` ``runs`` times; RSS after run ``WARM_RUNS``, after :func:`mid_run` and
    after the last one."""
    readings = {WARM_RUNS: 0, mid_run(runs): 0}
    for i in range(1, runs + 1):
        run_dag(dag, inputs)
        if i in readings:
            readings[i] = settled_rss_kib()
    return readings[WARM_RUNS], readings[mid_run(runs)], settled_rss_kib()


def memory_cases(cfg: Config) -> list[tuple[str, Shape, Callable[[], Any], dict[str, Any] | None]]:
    """The DAGs of this section: (label, shape, executor factory, run inputs)."""
    noop = NoopExecutor()
    lua = LuaExecutor(LUA_BODY)
    python = PythonExecutor(trivial)
    return [
        ("no-op", layered(1_000, width=100, k=3, seed=cfg.seed), lambda: noop, None),
        ("Lua", layered(100, width=10, k=3, seed=cfg.seed), lambda: lua, {"values": VALUES}),
        ("Python", layered(100, width=10, k=3, seed=cfg.seed), lambda: python, None),
    ]


def section_memory(cfg: Config) -> list[MemoryResult]:
    """Section 5: measure every case, print the table, return the figures."""
    runs = max(cfg.memory_runs, WARM_RUNS + 2)
    half = mid_run(runs) - WARM_RUNS
    results = []
    for label, shape, make_executor, inputs in memory_cases(cfg):
        dag = build_dag(shape, make_executor)
        warm, mid, end = rss_across_runs(dag, inputs, runs)
        results.append(MemoryResult(f"{label}, {shape.name}", shape.n, runs, warm, mid, end))
    table = Table(
        f"5. memory across {runs:,} runs of the same DAG (RSS, KiB)",
        [
            "DAG",
            f"after run {WARM_RUNS}",
            f"after run {mid_run(runs):,}",
            f"after run {runs:,}",
            "growth",
            "per run",
        ],
    )
    for r in results:
        table.add(
            r.dag,
            f"{r.rss_warm_kib:,}",
            f"{r.rss_mid_kib:,}",
            f"{r.rss_end_kib:,}",
            f"{r.growth_kib:+,}",
            f"{r.growth_kib * 1024 / half:+,.0f} B",
        )
    table.notes.append(
        f"growth = the smaller of the two halves' (a leak grows both, a pool's new thread one); "
        f"above {GROWTH_TOLERANCE_KIB} KiB counts as growing; RSS read after gc.collect()"
    )
    table.print()
    return results
