"""Section 5: does memory grow across repeated runs of the same DAG?

Each DAG is built once and run ``cfg.memory_runs`` times (1,000 by default) with ``dag.run()``;
the result of each run is dropped. After run 100 and after the last run a full collection
runs and the process RSS (``VmRSS``) is read; the difference is the growth. The first 100 runs
are the warm-up (thread pools, Lua state pools, chunk cache, allocator arenas all reach their
steady size), so a leak shows as a steady climb between the two readings.
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
#: Growth (KiB) between the two readings tolerated as allocator noise, not a leak: less than a
#: byte per node per run for the 1,000-node DAG over 900 runs.
GROWTH_TOLERANCE_KIB = 512


@dataclass
class MemoryResult:
    """RSS of one DAG after ``WARM_RUNS`` and after all runs."""

    dag: str
    nodes: int
    runs: int
    rss_warm_kib: int
    rss_end_kib: int

    @property
    def growth_kib(self) -> int:
        """RSS growth between the two readings."""
        return self.rss_end_kib - self.rss_warm_kib

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


def rss_across_runs(dag: DAG, inputs: dict[str, Any] | None, runs: int) -> tuple[int, int]:
    """Run ``dag`` ``runs`` times; RSS after run ``WARM_RUNS`` and after the last one."""
    warm = 0
    for i in range(1, runs + 1):
        run_dag(dag, inputs)
        if i == WARM_RUNS:
            warm = settled_rss_kib()
    return warm, settled_rss_kib()


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
    runs = max(cfg.memory_runs, WARM_RUNS + 1)
    results = []
    for label, shape, make_executor, inputs in memory_cases(cfg):
        dag = build_dag(shape, make_executor)
        warm, end = rss_across_runs(dag, inputs, runs)
        results.append(MemoryResult(f"{label}, {shape.name}", shape.n, runs, warm, end))
    table = Table(
        f"5. memory across {runs:,} runs of the same DAG (RSS, KiB)",
        ["DAG", f"after run {WARM_RUNS}", f"after run {runs:,}", "growth", "per run"],
    )
    for r in results:
        table.add(
            r.dag,
            f"{r.rss_warm_kib:,}",
            f"{r.rss_end_kib:,}",
            f"{r.growth_kib:+,}",
            f"{r.growth_kib * 1024 / (runs - WARM_RUNS):+,.0f} B",
        )
    table.notes.append(
        f"growth above {GROWTH_TOLERANCE_KIB} KiB counts as growing; RSS read after gc.collect()"
    )
    table.print()
    return results
