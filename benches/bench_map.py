"""Section "map": what dynamic fan-out (``map``) costs per item.

One mapped node over ``inputs.items`` (``--items``, 100,000 by default), each ``dag.run()``
timed whole (inputs in, expansion, every item, the collected list out) and divided by the
number of items, for items that are:

* no-ops (the scheduler's and driver's own cost per item);
* Lua, ``return {sq = item * item}``;
* Python, ``{"sq": ctx.item * ctx.item}`` on ``ctx`` (explicit style), and the same through a
  decorated workflow's ``square.map(items)`` (``@de.task def square(x)``).

Beside them, on 1,000 items of the same Python work (``--baseline-items``): dagengine's
Python map, ``dask.delayed`` (threaded scheduler, one delayed call per item, computed
together) and, when a Python with Prefect is given (``--prefect-python``, or
``DAGENGINE_BENCH_PREFECT`` naming its interpreter; Prefect is not a dependency of dagengine,
so it runs in its own environment, in a subprocess timed from inside), Prefect's
``task.map`` in a flow. Ratios are baseline / dagengine (higher: dagengine faster). Targets
(issue 19): no-op <= 0.5 µs/item, Lua <= 2, Python <= 2. Run alone with
``python benches/bench_map.py [--quick]``; timings are medians; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagengine as de
from bench_common import Config, Table, fmt_ratio, fmt_us, measure
from dagengine import DAG, LuaExecutor, Node, NodeContext, NoopExecutor, PythonExecutor
from dagengine.inputs import validate_inputs

TARGETS_US = {"no-op": 0.5, "Lua": 2.0, "Python": 2.0, "Python, task.map": 2.0}


def square_ctx(ctx: NodeContext) -> dict[str, Any]:
    """The Python item: its square."""
    item = ctx.item
    return {"sq": item * item}


@de.task
def square(x: int) -> dict[str, Any]:
    """The same work as a decorated task."""
    return {"sq": x * x}


@de.workflow("bench-map")
def squares(items: list[int]) -> Any:
    """One ``square`` per item."""
    return square.map(items)


def mapped(kind: str) -> DAG:
    """A DAG of one node mapped over ``inputs.items`` whose items are ``kind``."""
    if kind == "Python, task.map":
        return squares
    executors: dict[str, NoopExecutor | LuaExecutor | PythonExecutor] = {
        "no-op": NoopExecutor(),
        "Lua": LuaExecutor("return {sq = item * item}"),
        "Python": PythonExecutor(square_ctx),
    }
    executor = executors[kind]
    dag = DAG(f"map-{kind}")
    dag.add_node(Node("square", (), executor, map="inputs.items"))
    return dag.preprocess()


def square_plain(x: int) -> dict[str, Any]:
    """The baselines' item: the same work as a plain function."""
    return {"sq": x * x}


def time_dask(items: list[int], cfg: Config) -> float:
    """µs per item of ``dask.delayed`` calls over ``items``, computed together (threads)."""
    from dask.base import compute
    from dask.delayed import delayed

    def run() -> None:
        calls = [delayed(square_plain)(x) for x in items]
        compute(*calls, scheduler="threads")  # type: ignore[no-untyped-call]

    return measure(run, cfg.baseline_repeats, cfg.warmup).per_item_us(len(items))


PREFECT_SCRIPT = """
import json, statistics, sys, time
from prefect import flow, task

@task
def square(x):
    return {"sq": x * x}

@flow
def squares(items):
    return [f.result() for f in square.map(items)]

items = list(range(int(sys.argv[1])))
squares(items[:10])
samples = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    out = squares(items)
    samples.append(time.perf_counter() - start)
    assert len(out) == len(items)
print(json.dumps(statistics.median(samples) / len(items) * 1e6))
"""


def time_prefect(python: str, items: int, repeats: int) -> float | None:
    """µs per item of Prefect's ``task.map`` in a flow, run by ``python`` (which has Prefect);
    ``None`` if it could not be run twice in a row (the reason is printed)."""
    for _ in range(2):  # its ephemeral API server sometimes fails to start on a busy machine
        us = _time_prefect_once(python, items, repeats)
        if us is not None:
            return us
    return None


def _time_prefect_once(python: str, items: int, repeats: int) -> float | None:
    env = {
        **os.environ,
        # Its own home (the ephemeral API's SQLite database), quiet, and patient with a busy
        # machine: the ephemeral API server starts with the first flow.
        "PREFECT_HOME": tempfile.mkdtemp(prefix="bench-prefect-"),
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    try:
        done = subprocess.run(
            [python, "-c", PREFECT_SCRIPT, str(items), str(repeats)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            check=True,
        )
        return float(done.stdout.strip().splitlines()[-1])
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        print(f"prefect: not measured (exit {exc.returncode}: {last[0]})", file=sys.stderr)
        return None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"prefect: not measured ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


@dataclass
class MapResult:
    """µs per item of one kind of mapped node over ``items`` items."""

    variant: str
    items: int
    us_per_item: float
    #: ``us_per_item`` less the same run without the map (the inputs' conversion).
    map_us_per_item: float | None
    target_us: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def section_map(
    cfg: Config, items: int, baseline_items: int, prefect: str | None
) -> list[MapResult]:
    """Time every kind of mapped node and the baselines; print the tables."""
    results: list[MapResult] = []
    table = Table(
        f"map. one node mapped over {items:,} items (µs/item)",
        ["items", "whole run", "the map", "target"],
    )
    inputs = {"items": list(range(items))}
    # The same run without the map: converting the inputs (the list) in and the result out.
    plain = DAG("map-none")
    plain.add_node(Node("square", (), NoopExecutor()))
    plain.preprocess()
    base = measure(lambda: plain.run(inputs), cfg.repeats, cfg.warmup).per_item_us(items)
    for kind, target in TARGETS_US.items():
        dag = mapped(kind)
        # Checked once, untimed: reading the list converts every item's output to Python.
        assert len(dag.run(inputs).raise_for_status().outputs["square"]) == items

        def run(dag: DAG = dag) -> None:
            dag.run(inputs)

        us = measure(run, cfg.repeats, cfg.warmup).per_item_us(items)
        results.append(MapResult(kind, items, us, us - base, target))
        table.add(kind, fmt_us(us), fmt_us(us - base), f"<= {target}")
    table.notes.append("whole run: dag.run() (inputs in, expansion, items, outputs kept) / items")
    table.notes.append(f"the map: whole run minus the same run without it ({base:.2f} µs/item)")
    checked = measure(
        lambda: validate_inputs(squares.inputs or {}, inputs), cfg.repeats, cfg.warmup
    ).per_item_us(items)
    table.notes.append(
        f"task.map includes checking the typed input (list[int]): {checked:.2f} µs/item of it"
    )
    table.print()

    small = {"items": list(range(baseline_items))}
    side = Table(
        f"map vs baselines: {baseline_items:,} items of the same Python work (µs/item)",
        ["runner", "µs/item", "ratio to dagengine"],
    )
    dag = mapped("Python")
    ours = measure(lambda: dag.run(small).raise_for_status(), cfg.repeats, cfg.warmup).per_item_us(
        baseline_items
    )
    results.append(MapResult("Python (baseline size)", baseline_items, ours, None, None))
    side.add("dagengine map (Python items)", fmt_us(ours), "1.0x")
    dask_us = time_dask(small["items"], cfg)
    results.append(MapResult("dask.delayed", baseline_items, dask_us, None, None))
    side.add("dask.delayed, threads", fmt_us(dask_us), fmt_ratio(dask_us / ours))
    if prefect:
        prefect_us = time_prefect(prefect, baseline_items, cfg.baseline_repeats)
        if prefect_us is not None:
            results.append(MapResult("prefect task.map", baseline_items, prefect_us, None, None))
            side.add("Prefect task.map in a flow", fmt_us(prefect_us), fmt_ratio(prefect_us / ours))
    else:
        side.notes.append("Prefect: pass --prefect-python (a Python with Prefect installed)")
    side.notes.append("Airflow's expand needs a scheduler and a metadata database: not run here")
    side.notes.append("ratio = baseline µs/item / dagengine µs/item (higher: dagengine faster)")
    side.print()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--items", type=int, default=100_000, help="items of the mapped node")
    parser.add_argument(
        "--baseline-items", type=int, default=1_000, help="items of the side-by-side runs"
    )
    parser.add_argument(
        "--prefect-python",
        default=os.environ.get("DAGENGINE_BENCH_PREFECT"),
        help="a Python interpreter with Prefect installed",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cfg = Config(
        quick=args.quick,
        repeats=3 if args.quick else 7,
        baseline_repeats=3 if args.quick else 5,
    )
    results = section_map(cfg, args.items, args.baseline_items, args.prefect_python)
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
