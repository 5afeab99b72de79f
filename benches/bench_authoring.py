"""Section "authoring": the decorators (``dagengine.task`` / ``dagengine.workflow``).

Two figures, each beside the explicit builder doing the same (``Node`` + ``add_node`` with
``PythonExecutor`` functions of ``ctx``):

1. defining a decorated workflow of ``cfg.nodes`` task calls (100 wide, each call taking an
   item of the previous layer's output, ``step(prev[i]["v"])``): the time from the decorator
   to the recorded DAG (the issue's target: 10,000 tasks in <= 50 ms);
2. running it: µs per node, the explicit DAG's functions reading ``ctx.results`` themselves,
   so the difference is what delivering referenced values as arguments costs.

Run alone with ``python benches/bench_authoring.py [--quick]``; ``run.py`` runs it as the
``authoring`` section. Timings are the median of the repetitions (the minimum is shown too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagengine as de
from bench_common import Config, Table, fmt_ratio, fmt_us, ratio
from dagengine import DAG, Node, NodeContext, PythonExecutor

WIDTH = 100
#: Issue 19's target for defining the decorated 10,000-task workflow.
TARGET_MS = 50.0


@de.task
def step(v: int) -> dict[str, Any]:
    return {"v": v + 1}


def define_decorated(nodes: int) -> DAG:
    """The decorated workflow of ``nodes`` task calls, ``WIDTH`` per layer."""

    def layers(start: int) -> None:
        prev = [step(start) for _ in range(min(WIDTH, nodes))]
        for made in range(len(prev), nodes, WIDTH):
            prev = [step(prev[i]["v"]) for i in range(min(WIDTH, nodes - made))]

    return de.workflow("authoring-bench")(layers)


def _root(ctx: NodeContext) -> dict[str, Any]:
    return {"v": ctx.inputs["start"] + 1}


def _layer_fn(parent: str) -> Callable[[NodeContext], dict[str, Any]]:
    def fn(ctx: NodeContext) -> dict[str, Any]:
        return {"v": ctx.results[parent]["v"] + 1}

    return fn


def define_explicit(nodes: int) -> DAG:
    """The same graph with the builder API."""
    dag = DAG("authoring-bench")
    ids = [f"step_{i}" for i in range(nodes)]
    for i, node_id in enumerate(ids):
        if i < WIDTH:
            dag.add_node(Node(node_id, (), PythonExecutor(_root)))
        else:
            parent = ids[i - WIDTH]
            dag.add_node(Node(node_id, (parent,), PythonExecutor(_layer_fn(parent))))
    return dag


@dataclass
class AuthoringResult:
    """One figure, dagengine decorated vs the explicit builder."""

    what: str
    nodes: int
    decorated: float  # ms to define, or µs/node to run
    decorated_min: float
    explicit: float
    unit: str

    @property
    def vs_explicit(self) -> float | None:
        """explicit / decorated: above 1, the decorators are faster."""
        return ratio(self.explicit, self.decorated)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "vs_explicit": self.vs_explicit}


def _times(
    fn: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    fn()  # warm-up: imports, caches
    out = []
    for _ in range(repeats):
        start = clock()
        fn()
        out.append(clock() - start)
    return out


def section_authoring(cfg: Config) -> list[AuthoringResult]:
    """Define and run, decorated and explicit; prints the table."""
    n = cfg.nodes
    repeats = max(cfg.repeats, 5)
    dec = _times(lambda: define_decorated(n), repeats)
    exp = _times(lambda: define_explicit(n), repeats)
    define = AuthoringResult(
        "define",
        n,
        statistics.median(dec) * 1e3,
        min(dec) * 1e3,
        statistics.median(exp) * 1e3,
        "ms",
    )
    # CPU time too: on a loaded machine it stays near what an idle one would take.
    dec_cpu = _times(lambda: define_decorated(n), repeats, time.process_time)
    exp_cpu = _times(lambda: define_explicit(n), repeats, time.process_time)
    define_cpu = AuthoringResult(
        "define, CPU",
        n,
        statistics.median(dec_cpu) * 1e3,
        min(dec_cpu) * 1e3,
        statistics.median(exp_cpu) * 1e3,
        "ms",
    )
    decorated, explicit = define_decorated(n), define_explicit(n)
    inputs = {"start": 0}
    decorated.run(inputs).raise_for_status()
    explicit.run(inputs).raise_for_status()
    run_dec = _times(lambda: decorated.run(inputs), cfg.repeats)
    run_exp = _times(lambda: explicit.run(inputs), cfg.repeats)
    run = AuthoringResult(
        "run",
        n,
        statistics.median(run_dec) / n * 1e6,
        min(run_dec) / n * 1e6,
        statistics.median(run_exp) / n * 1e6,
        "µs/node",
    )
    results = [define, define_cpu, run]
    table = Table(
        f"Authoring: decorated workflow vs explicit builder, {n:,} Python nodes",
        ["figure", "decorated", "decorated (min)", "explicit", "explicit / decorated"],
    )
    for r in results:
        table.add(
            f"{r.what} ({r.unit})",
            fmt_us(r.decorated),
            fmt_us(r.decorated_min),
            fmt_us(r.explicit),
            fmt_ratio(r.vs_explicit),
        )
    table.notes.append("define: the decorator recording every task call into a DAG (wall time)")
    table.notes.append("define, CPU: the same in process CPU time, which load inflates less")
    table.notes.append("run: DAG.run(); decorated nodes receive referenced values as arguments")
    if n == 10_000:
        verdict = "met" if define.decorated <= TARGET_MS else "NOT MET"
        table.notes.append(
            f"target (issue 19): defined in <= {TARGET_MS:g} ms (wall median): {verdict}; "
            f"CPU median {define_cpu.decorated:.1f} ms"
        )
    table.print()
    return results


def main() -> None:
    """``python benches/bench_authoring.py [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    cfg = Config(quick=args.quick, nodes=args.nodes, repeats=3 if args.quick else 7)
    section_authoring(cfg)


if __name__ == "__main__":
    main()
