"""Section "cache": what caching a node costs and saves, per node, in a local ``dag.run``.

A chain of ``--nodes`` nodes (1,000 by default) of Lua work and of Python work, run whole and
divided by the number of nodes, side by side:

* not cached (the baseline);
* every node cached, run with ``cache=None`` (the driver's check of a plan with caches);
* every node cached, every run a miss (a fresh ``MemoryCache``: the key, the lookup and the
  store of each node, on top of the work);
* every node cached, every run a hit (a warm ``MemoryCache``: the key and the lookup, no
  work).

The key hashes the node's code, the run's inputs and its parent's output; a lookup and a
store each attach the driver to the interpreter once. Ratios are the baseline's time over
the row's (above 1: faster than not caching). Run alone with
``python benches/bench_cache.py [--quick]``; timings are medians; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Table, fmt_ratio, fmt_us, measure
from dagengine import DAG, LuaExecutor, Node, NodeContext, PythonExecutor
from dagengine.cache import MemoryCache

LUA = "local s = 0 for i = 1, 200 do s = s + i end return {v = s + (inputs.n or 0)}"


def work(ctx: NodeContext) -> dict[str, Any]:
    """The Python node: a little arithmetic."""
    return {"v": sum(range(200)) + ctx.inputs.get("n", 0)}


def chain(kind: str, n: int, cached: bool) -> DAG:
    """``n`` nodes of ``kind``, each depending on the one before."""
    dag = DAG(f"cache-{kind}")
    for i in range(n):
        executor = LuaExecutor(LUA) if kind == "Lua" else PythonExecutor(work)
        deps = [f"n{i - 1}"] if i else []
        dag.add_node(Node(f"n{i}", deps, executor, cache=True if cached else None))
    return dag.preprocess()


def _row(kind: str, n: int, repeats: int, warmup: int) -> list[str]:
    """The table's cells for chains of ``kind`` nodes."""
    plain = chain(kind, n, cached=False)
    cached = chain(kind, n, cached=True)
    base = measure(lambda: plain.run({"n": 1}), repeats, warmup).per_item_us(n)
    off = measure(lambda: cached.run({"n": 1}, cache=None), repeats, warmup).per_item_us(n)
    miss = measure(lambda: cached.run({"n": 1}, cache=MemoryCache()), repeats, warmup)
    warm = MemoryCache()
    first = cached.run({"n": 1}, cache=warm)
    assert first.ok, first.error
    again = cached.run({"n": 1}, cache=warm)
    assert again.node_results[f"n{n - 1}"].cached_from == first.run_id
    hit = measure(lambda: cached.run({"n": 1}, cache=warm), repeats, warmup).per_item_us(n)
    miss_us = miss.per_item_us(n)
    return [
        fmt_us(base),
        fmt_us(off),
        fmt_us(miss_us),
        fmt_us(hit),
        fmt_ratio(base / miss_us),
        fmt_ratio(base / hit),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer nodes and repeats")
    parser.add_argument("--nodes", type=int, default=1_000)
    args = parser.parse_args()
    n = 200 if args.quick else args.nodes
    repeats, warmup = (3, 1) if args.quick else (7, 1)
    table = Table(
        f"cache: a chain of {n:,} nodes, local dag.run, µs per node (median)",
        ["work", "not cached", "cache=None", "all miss", "all hit", "miss/base", "hit/base"],
    )
    for kind in ("Lua", "Python"):
        table.add(kind, *_row(kind, n, repeats, warmup))
    table.notes.append("ratios: not cached / cached (above 1: the cached run is faster)")
    table.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
