"""Airflow's dynamic task mapping (``expand``) beside dagengine's ``map``, on the same work.

``bench_map.py`` puts dagengine's map beside ``dask.delayed`` and Prefect's ``task.map``;
this file adds Airflow's ``square.expand(x=items)``, which needs a metadata database, so it
runs apart: Airflow is not a dependency of dagengine, and lives in its own environment
(``--airflow-python``, or ``DAGENGINE_BENCH_AIRFLOW`` naming its interpreter; for instance
``python3 -m venv /tmp/airflow && /tmp/airflow/bin/pip install apache-airflow``).

The work: ``{"sq": x * x}`` for each of ``--items`` items (1,000 by default), then one task
that reads the list of outputs. dagengine runs it as one mapped Python node
(``dag.run()``, the median of several). Airflow runs it with ``dag.test()``: its documented
way of running a DAG in one process without a scheduler, each mapped task instance going
through its metadata database (SQLite, in a fresh ``AIRFLOW_HOME``) as a scheduled one
would; timed from inside its process, after a warm-up run of 10 items (the median of
``--repeats``, 1 by default: a run of 1,000 items takes minutes). The ratio is Airflow /
dagengine (higher: dagengine faster). Nothing is asserted.

``python benches/bench_map_airflow.py --airflow-python /tmp/airflow/bin/python [--items N]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Table, fmt_ratio, fmt_us, measure
from bench_map import mapped

#: The DAG file Airflow parses (its bundle): a DAG of 10 items (the warm-up) and one of
#: ``BENCH_ITEMS``.
DAG_FILE = """
import os
import pendulum
from airflow.sdk import dag, task

@task
def square(x):
    return {"sq": x * x}

@task
def count(parts):
    return len(list(parts))

def build(n):
    @dag(dag_id=f"squares_{n}", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False)
    def squares():
        count(square.expand(x=list(range(n))))
    return squares()

DAGS = {n: build(n) for n in (10, int(os.environ["BENCH_ITEMS"]))}
"""

#: Run in Airflow's interpreter: the warm-up, then the timed runs; prints µs per item.
TIMING_SCRIPT = """
import importlib.util, json, os, statistics, sys, time
items, repeats = int(sys.argv[1]), int(sys.argv[2])
path = os.path.join(os.environ["AIRFLOW_HOME"], "dags", "bench_squares.py")
spec = importlib.util.spec_from_file_location("bench_squares", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.DAGS[10].test()
samples = []
for _ in range(repeats):
    start = time.perf_counter()
    run = module.DAGS[items].test()
    samples.append(time.perf_counter() - start)
    assert "success" in str(run.state).lower(), run.state
print(json.dumps(statistics.median(samples) / items * 1e6))
"""


def time_airflow(python: str, items: int, repeats: int) -> float | None:
    """µs per item of ``expand`` over ``items`` under ``dag.test()``, in ``python`` (which
    has Airflow); ``None`` if it could not be run (the reason is printed)."""
    home = tempfile.mkdtemp(prefix="bench-airflow-")
    (Path(home) / "dags").mkdir()
    (Path(home) / "dags" / "bench_squares.py").write_text(DAG_FILE)
    env = {
        **os.environ,
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "BENCH_ITEMS": str(items),
    }
    try:
        subprocess.run(
            [python, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=True,
        )
        done = subprocess.run(
            [python, "-c", TIMING_SCRIPT, str(items), str(repeats)],
            capture_output=True,
            text=True,
            timeout=3600,
            env=env,
            check=True,
        )
        return float(done.stdout.strip().splitlines()[-1])
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        print(f"airflow: not measured (exit {exc.returncode}: {last[0]})", file=sys.stderr)
        return None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"airflow: not measured ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def main() -> int:
    """Time both and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000, help="items of the mapped task")
    parser.add_argument("--repeats", type=int, default=1, help="Airflow's timed runs")
    parser.add_argument(
        "--airflow-python",
        default=os.environ.get("DAGENGINE_BENCH_AIRFLOW"),
        help="a Python interpreter with Airflow installed",
    )
    args = parser.parse_args()
    inputs = {"items": list(range(args.items))}
    dag = mapped("Python")
    ours = measure(lambda: dag.run(inputs).raise_for_status(), 7, 2).per_item_us(args.items)
    table = Table(
        f"map vs Airflow expand: {args.items:,} items of the same Python work (µs/item)",
        ["runner", "µs/item", "ratio to dagengine"],
    )
    table.add("dagengine map (Python items)", fmt_us(ours), "1.0x")
    if args.airflow_python:
        airflow = time_airflow(args.airflow_python, args.items, args.repeats)
        if airflow is not None:
            table.add("Airflow expand, dag.test()", fmt_us(airflow), fmt_ratio(airflow / ours))
    else:
        table.notes.append("Airflow: pass --airflow-python (a Python with Airflow installed)")
    table.notes.append("Airflow: dag.test() in one process, no scheduler; SQLite metadata DB")
    table.notes.append("ratio = Airflow µs/item / dagengine µs/item (higher: dagengine faster)")
    table.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
