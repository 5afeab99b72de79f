"""Can the pruner keep up with a busy service? (issue 23)

A SQLite file store holds ``--backlog`` finished runs of the 3-node Lua workflow back-dated
40 days (copies of a real run's rows, as ``bench_retention.py`` makes them), past a 7-day
retention. An orchestrator on it takes new runs open-loop at ``--rate`` runs/s (8 in flight)
for ``--seconds`` while the background pruner works through the backlog, three ways, each on
a fresh copy of the same file, ``--rounds`` times in alternation:

* **no prune**: the pruner is not started (the latency baseline);
* **gentle**: the pruner at its default share of the store's time (``PRUNE_DUTY``, 5%);
* **catching up**: the pruner at the most it takes once a pass is behind
  (``MAX_PRUNE_DUTY``, 50%; the real pruner gets there after ~40% of its interval).

Printed per way: runs pruned per second, p50 and p99 of the new runs and p99 against no
prune. The question is the first column against ``--rate``: a pruner slower than the
service's own rate of finished runs never reaches a plateau.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench_retention import DAY, Template
from bench_service import Load, drive, workflow
from dagengine.orchestrator import Config, Orchestrator
from dagengine.orchestrator.pruner import Pruner
from dagengine.orchestrator.store import Store
from dagengine.orchestrator.store.retention import (
    MAX_PRUNE_DUTY,
    PRUNE_DUTY,
    RetentionPolicy,
)

RETENTION = 7 * DAY
WAYS = ("no prune", "gentle", "catching up")


class _Pinned(Pruner):
    """A pruner whose share of the store's time is pinned (the real one raises it with time)."""

    def __init__(self, store: Store, share: float) -> None:
        super().__init__(store, None, lambda: RetentionPolicy(RETENTION), interval=3600)
        self.share = share

    def duty(self, elapsed: float) -> float:
        return self.share


def build(folder: Path, backlog: int) -> Path:
    """A store file with ``backlog`` back-dated runs, checkpointed."""
    template = Template.of_a_real_run(folder)
    path = folder / "backlog.db"
    t0 = time.time() - 40 * DAY
    with Store(path) as store:
        for start in range(0, backlog, 10_000):
            with store.transaction():
                count = min(10_000, backlog - start)
                template.write(store._db, f"old{start:08d}-", count, t0, t0 + DAY)
        store.flush()
        with store._lock:
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return path


def one(path: Path, way: str, rate: float, seconds: float) -> tuple[Load, float]:
    """New runs at ``rate`` for ``seconds`` with the pruner run ``way``; (their load, runs
    pruned per second)."""
    config = Config(store_path=str(path), retention=None, prune_interval=3600)
    orch = Orchestrator(config=config)
    try:
        orch.register_workflow("bench-3", "1.0.0", workflow())

        def call(_: int) -> object:
            return orch.execute_workflow("bench-3", inputs={"factor": 2})

        drive("warm-up", call, 8, 200, rate=rate)
        pruner = None if way == "no prune" else _Pinned(orch.store, _share(way))
        pruned: dict[str, float] = {}
        thread = None
        if pruner is not None:

            def prune() -> None:
                began = time.perf_counter()
                report = pruner.run_pass()
                pruned["runs"] = report.runs
                pruned["seconds"] = time.perf_counter() - began

            thread = threading.Thread(target=prune)
            thread.start()
        load = drive(way, call, 8, int(rate * seconds), rate=rate)
        if pruner is not None and thread is not None:
            pruner.stop()
            thread.join()
        rate_pruned = pruned["runs"] / pruned["seconds"] if pruned else 0.0
        return load, rate_pruned
    finally:
        orch.stop()


def _share(way: str) -> float:
    return PRUNE_DUTY if way == "gentle" else MAX_PRUNE_DUTY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=60_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20,000 runs, 5 s, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.backlog, args.seconds, args.rounds = 20_000, 5.0, 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = build(folder, args.backlog)
        loads: dict[str, list[Load]] = {way: [] for way in WAYS}
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        averages: list[float] = []
        for round_ in range(args.rounds):
            order = WAYS if round_ % 2 == 0 else tuple(reversed(WAYS))
            for way in order:
                path = folder / f"run-{round_}-{WAYS.index(way)}.db"
                shutil.copy(source, path)
                load, pruned = one(path, way, args.rate, args.seconds)
                loads[way].append(load)
                rates[way].append(pruned)
                averages.append(os.getloadavg()[0])
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    base_p99 = statistics.median(load.pct(0.99) for load in loads["no prune"])
    print(
        f"pruner pace: {args.backlog:,} runs back-dated past a 7-day retention; new runs "
        f"offered at {args.rate:,.0f}/s for {args.seconds:.0f} s; {args.rounds} round(s); "
        f"load average {min(averages):.1f}-{max(averages):.1f}"
    )
    print(f"  {'way':14} {'pruned runs/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'p99 x none':>11}")
    for way in WAYS:
        p50 = statistics.median(load.pct(0.5) for load in loads[way]) * 1e3
        p99 = statistics.median(load.pct(0.99) for load in loads[way]) * 1e3
        pruned = statistics.median(rates[way])
        shown = "-" if way == "no prune" else f"{pruned:,.0f}"
        print(f"  {way:14} {shown:>14} {p50:8.2f} {p99:8.2f} {p99 / (base_p99 * 1e3):11.2f}")
    catching = statistics.median(rates["catching up"])
    gentle = statistics.median(rates["gentle"])
    print(
        f"  catching up prunes {catching / gentle:.1f}x as fast as gentle; keeps up with "
        f"{args.rate:,.0f} finished runs/s: gentle {'yes' if gentle >= args.rate else 'NO'}, "
        f"catching up {'yes' if catching >= args.rate else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
