"""Shared pieces of the service benchmarks (``bench_engine``, ``bench_orchestrator``): the
3-node Lua workflow they run, and a driver that keeps N calls in flight and times each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dagengine import DAG, LuaExecutor, Node


def workflow() -> DAG:
    """The 3-node Lua workflow: extract -> transform -> load."""
    dag = DAG("bench-3", "1.0.0")
    dag.add_node(Node("extract", [], LuaExecutor("return {rows = {1, 2, 3, 4, 5}}")))
    dag.add_node(
        Node(
            "transform",
            ["extract"],
            LuaExecutor(
                "local s = 0 for _, v in ipairs(results.extract.rows) do s = s + v end "
                "return {total = s * inputs.factor}"
            ),
        )
    )
    dag.add_node(
        Node("load", ["transform"], LuaExecutor("return {saved = results.transform.total}"))
    )
    return dag


@dataclass
class Load:
    """Calls made at a given concurrency: how many, how long in all, each one's latency."""

    name: str
    in_flight: int
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drive(
    name: str,
    call: Callable[[int], object],
    in_flight: int,
    total: int,
    *,
    rate: float | None = None,
) -> Load:
    """Make ``total`` calls (``call(i)``) with ``in_flight`` threads, timing each.

    Closed loop by default: each thread makes its next call as soon as its last one is
    answered. With ``rate`` (calls per second), open loop: call ``i`` is due at
    ``i / rate`` seconds and its latency is counted from then, so time spent waiting for a
    free thread (all ``in_flight`` busy) is counted too."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.perf_counter()

    def worker() -> None:
        local: list[float] = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            if rate is None:
                t0 = time.perf_counter()
            else:
                t0 = start + i / rate
                early = t0 - time.perf_counter()
                if early > 0:
                    time.sleep(early)
            call(i)
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    with ThreadPoolExecutor(in_flight) as pool:
        for f in [pool.submit(worker) for _ in range(in_flight)]:
            f.result()
    return Load(name, in_flight, total, time.perf_counter() - start, latencies)
