"""The orchestrator on its two store backends, side by side: the 3-node Lua workflow
(``bench_service.workflow``) through one orchestrator with three local engine processes, on a
SQLite file and on a PostgreSQL database, in alternating rounds.

    python benches/bench_store_backends.py [--runs N] [--rounds R] [--quick]

PostgreSQL comes from ``DAGENGINE_TEST_POSTGRES_URL`` (``eval "$(.ci/postgres.sh start)"``),
else a throwaway cluster is started with ``.ci/postgres.sh`` and stopped at the end. Note the
script's cluster runs with ``fsync=off`` (a test cluster): give a URL of a server configured as
in production to measure its commits.

Rows: runs/s with 64 runs in flight (closed loop), p50/p99 of a run's latency at 64 in flight,
and p50 of a lone run (1 in flight: the store's added latency). Target (issue 22): PostgreSQL
runs/s >= 50% of SQLite's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from bench_service import Load, drive, start_engine, wait_for_engines, workflow
from dagengine.orchestrator import Config, Orchestrator

ROOT = Path(__file__).resolve().parent.parent


def postgres_url() -> tuple[str, str | None]:
    """A database URL and the folder of a cluster started here (``None``: given)."""
    given = os.environ.get("DAGENGINE_TEST_POSTGRES_URL")
    if given:
        return given, None
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "postgres.sh"), "start", "--no-install"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    return exports["DAGENGINE_TEST_POSTGRES_URL"], exports["DAGENGINE_TEST_POSTGRES_DIR"]


def fresh_schema(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-c search_path={name}')}"


def median_round(rounds: list[Load]) -> Load:
    return sorted(rounds, key=lambda load: load.per_second)[len(rounds) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000, help="runs per round (64 in flight)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="600 runs, 1 round")
    args = parser.parse_args(argv)
    total, rounds = (600, 1) if args.quick else (args.runs, args.rounds)
    spec = workflow().to_spec()
    url, cluster = postgres_url()
    tmp = tempfile.TemporaryDirectory()
    engines = [start_engine(f"engine-{i}") for i in range(3)]
    orchs: dict[str, Orchestrator] = {}
    try:
        targets = {
            "sqlite": str(Path(tmp.name) / "store.db"),
            "postgres": fresh_schema(url, "bench_store_backends"),
        }
        for name, target in targets.items():
            config = Config(
                store_path=target,
                discovery="static",
                engines=tuple(addr for _, addr in engines),
                prune_interval=3600,
            )
            orch = Orchestrator.from_config(config, grpc_port=None)
            wait_for_engines(orch, 3)
            orch.register_workflow("bench-3", "1.0.0", spec)
            for i in range(200):
                orch.execute_workflow("bench-3", {"factor": 3}, key=f"w{i}")
            orchs[name] = orch
        loads: dict[str, list[Load]] = {name: [] for name in orchs}
        for r in range(rounds):
            for name, orch in orchs.items():

                def call(i: int, r: int = r, orch: Orchestrator = orch) -> object:
                    return orch.execute_workflow("bench-3", {"factor": 3}, key=f"k{r}-{i}")

                loads[name].append(drive(name, call, 64, total))
        alone = {
            name: drive(
                name,
                lambda i, orch=orch: orch.execute_workflow("bench-3", {"factor": 3}),
                1,
                200 if args.quick else 500,
            )
            for name, orch in orchs.items()
        }
        print(f"{'store':<10} {'runs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'lone p50 ms':>12}")
        best = {name: median_round(rows) for name, rows in loads.items()}
        for name, load in best.items():
            print(
                f"{name:<10} {load.per_second:>8.0f} {load.pct(0.5) * 1e3:>8.2f} "
                f"{load.pct(0.99) * 1e3:>8.2f} {alone[name].pct(0.5) * 1e3:>12.2f}"
            )
        pairs = [
            pg.per_second / lite.per_second
            for pg, lite in zip(loads["postgres"], loads["sqlite"], strict=True)
        ]
        print("postgres / sqlite per round: " + ", ".join(f"{r:.0%}" for r in pairs))
        ratio = best["postgres"].per_second / best["sqlite"].per_second
        added = (alone["postgres"].pct(0.5) - alone["sqlite"].pct(0.5)) * 1e3
        verdict = "met" if ratio >= 0.5 else "NOT met"
        print(f"postgres / sqlite throughput: {ratio:.0%} (target >= 50%: {verdict})")
        print(f"a lone run's p50 on postgres: {added:+.2f} ms against sqlite")
        return 0
    finally:
        for orch in orchs.values():
            orch.stop()
        for proc, _ in engines:
            proc.terminate()
            proc.wait(timeout=30)
        tmp.cleanup()
        if cluster is not None:
            subprocess.run(
                ["bash", str(ROOT / ".ci" / "postgres.sh"), "stop", cluster], check=False
            )


if __name__ == "__main__":
    sys.exit(main())
