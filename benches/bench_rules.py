"""Section "rules": what conditions (``when``) and trigger rules cost per node.

On the three run shapes of section 1 (chain, fan, layered; ``cfg.nodes`` nodes), each
``dag.run()`` timed as in section 1, with every node given:

* nothing (the section-1 figure, measured again here so the differences are of one run);
* ``when="true"``: a Lua condition evaluated on the run's driver before each node;
* ``when="inputs.go"``: one that reads the run's inputs (these two are answered without Lua:
  a constant or a boolean field, see ``dagengine_lua::evaluate_bool``);
* ``when="inputs.n > 0"``: one that runs in Lua (a comparison);
* ``trigger_rule="all_done"``: a rule other than the default, which keeps per-node tallies;

and, on Python nodes, a Python callable as ``when`` beside the same nodes without one. The
cost of a condition is the difference to the plain run, per node (the issue's target: a
``when`` costs <= 1 µs per node). Run alone with ``python benches/bench_rules.py [--quick]``;
``run.py`` runs it as the ``rules`` section. Timings are medians; nothing is asserted.

A variant and its base are timed in alternation (base, variant, base, variant, ...), and
its cost is the median of the per-pair differences: on a shared machine the load drifts
between two separate series of runs by more than a condition costs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Config, Shape, Table, fmt_us, measure
from bench_dags import run_shapes
from dagengine import DAG, Node, NodeContext, NoopExecutor, PythonExecutor


def trivial(ctx: NodeContext) -> None:
    """A Python node that does nothing."""
    return None


def go(ctx: NodeContext) -> bool:
    """A Python condition that holds."""
    return True


#: Variants: name -> (executor factory, extra Node keywords).
VARIANTS: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "no-op": (NoopExecutor, {}),
    'no-op, when="true"': (NoopExecutor, {"when": "true"}),
    'no-op, when="inputs.go"': (NoopExecutor, {"when": "inputs.go"}),
    'no-op, when="inputs.n > 0"': (NoopExecutor, {"when": "inputs.n > 0"}),
    'no-op, trigger_rule="all_done"': (NoopExecutor, {"trigger_rule": "all_done"}),
    "Python": (lambda: PythonExecutor(trivial), {}),
    "Python, when=callable": (lambda: PythonExecutor(trivial), {"when": go}),
}

#: Each variant is compared with this one.
BASE = {
    'no-op, when="true"': "no-op",
    'no-op, when="inputs.go"': "no-op",
    'no-op, when="inputs.n > 0"': "no-op",
    'no-op, trigger_rule="all_done"': "no-op",
    "Python, when=callable": "Python",
}


def build(shape: Shape, variant: str) -> DAG:
    """``shape`` with every node built as ``variant`` says."""
    make, extra = VARIANTS[variant]
    ids = shape.ids()
    dag = DAG()
    for i, parents in enumerate(shape.parents):
        dag.add_node(Node(ids[i], [ids[p] for p in parents], make(), **extra))
    return dag.preprocess()


@dataclass
class RulesResult:
    """µs per node of one variant on one shape; ``extra_us`` is the difference to its base."""

    shape: str
    variant: str
    nodes: int
    us_per_node: float
    extra_us: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def paired(
    base: Callable[[], None], variant: Callable[[], None], cfg: Config, n: int
) -> tuple[float, float]:
    """µs per node of ``variant`` (median) and the median of its per-pair differences to
    ``base``, the two timed in alternation (``cfg.repeats`` pairs after the warm-up)."""
    for _ in range(cfg.warmup):
        base()
        variant()
    ours: list[float] = []
    diffs: list[float] = []
    for _ in range(cfg.repeats):
        pair = []
        for fn in (base, variant):
            gc.collect()
            start = time.perf_counter()
            fn()
            pair.append(time.perf_counter() - start)
        ours.append(pair[1])
        diffs.append(pair[1] - pair[0])
    return statistics.median(ours) / n * 1e6, statistics.median(diffs) / n * 1e6


def section_rules(cfg: Config) -> list[RulesResult]:
    """Time every variant on every shape; print the table."""
    results: list[RulesResult] = []
    table = Table(
        "rules. conditions and trigger rules (µs/node)",
        ["shape / variant", "µs/node", "cost of when / rule"],
    )
    inputs = {"go": True, "n": 1}
    for shape in run_shapes(cfg):
        dags = {variant: build(shape, variant) for variant in VARIANTS}

        def run(variant: str, dags: dict[str, DAG] = dags) -> Callable[[], None]:
            dag = dags[variant]

            def once() -> None:
                dag.run(inputs).raise_for_status()

            return once

        for variant in VARIANTS:
            base = BASE.get(variant)
            if base is None:
                us = measure(run(variant), cfg.repeats, cfg.warmup).per_item_us(shape.n)
                extra = None
            else:
                us, extra = paired(run(base), run(variant), cfg, shape.n)
            results.append(RulesResult(shape.name, variant, shape.n, us, extra))
            table.add(
                f"{shape.name} / {variant}",
                fmt_us(us),
                "" if extra is None else f"{extra:+.3f}",
            )
    table.notes.append(
        "cost = µs/node of the variant minus µs/node of the same nodes without: the median of"
        " the differences of runs timed in alternation"
    )
    table.notes.append("target: a when costs <= 1 µs per node")
    table.print()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes per shape")
    args = parser.parse_args()
    cfg = Config(quick=args.quick, nodes=args.nodes, repeats=3 if args.quick else 7)
    section_rules(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
