"""Shared pieces of the service benchmarks (``bench_engine``, ``bench_orchestrator``): the
3-node Lua workflow they run, and a driver that keeps N calls in flight and times each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagengine import DAG, LuaExecutor, Node

ROOT = Path(__file__).resolve().parent.parent


def start_engine(engine_id: str, folder: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """``dagengine engine`` (capacity 64) on a free loopback port: the process and its
    address. With ``folder``, the engine runs there with it on its ``PYTHONPATH`` (so it
    imports the benchmark's ``python:`` nodes); else in the repository's root."""
    env = None
    if folder is not None:
        path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagengine", "engine", "--host", "127.0.0.1", "--port", "0",
         "--capacity", "64", "--engine-id", engine_id],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=folder or ROOT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    match = re.search(r"listening on (\S+)", proc.stdout.readline())
    if match is None:
        proc.kill()
        raise SystemExit(f"engine {engine_id} did not start")
    return proc, match.group(1)


def wait_for_engines(orch: Any, count: int, timeout: float = 30.0) -> None:
    """Wait until static discovery has found ``count`` engines."""
    deadline = time.monotonic() + timeout
    while len(orch.engines()) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"static discovery did not find the {count} engines")
        time.sleep(0.05)


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
