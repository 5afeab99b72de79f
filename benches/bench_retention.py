"""Retention benchmark (issue 23): the store's size under a month of load with a 7-day
retention, and run latency through the orchestrator with and without a prune running.

    python benches/bench_retention.py [--runs-per-day N] [--days N] [--backlog N] [--quick]

* plateau: a month of load simulated on a virtual clock: every day ``--runs-per-day`` runs
  of the 3-node Lua workflow are written with that day's timestamps (copies of the rows a
  real run left: its run row, 3 node outputs, its events), then the store is pruned as the
  background pruner does (7-day retention, batches of 500, incremental vacuum). Printed:
  the store's runs and file size at the end of each day, and the bytes per run.
* latency: an orchestrator with a file store holding ``--backlog`` finished runs back-dated
  40 days (13 rows each: 1.3 million rows for 100,000 runs). Runs are offered at
  ``--rate`` runs/s (open loop, 8 in flight, each timed from when it was due): first with
  no prune (baseline), then while the pruner deletes the backlog. Printed: p50 and p99 of
  both and the ratio of the p99s (target: within 20%).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_service import Load, drive, workflow
from dagengine.orchestrator import Config, Orchestrator
from dagengine.orchestrator.pruner import Pruner
from dagengine.orchestrator.store import Store
from dagengine.orchestrator.store.compact import expand
from dagengine.orchestrator.store.retention import RetentionPolicy

DAY = 86400.0
RETENTION = 7 * DAY


class Template:
    """The rows one real run of the workflow left in the store, to be copied."""

    def __init__(self, path: str, run_id: str) -> None:
        db = sqlite3.connect(path)
        try:
            # (Not the run's number: each copy gets its own.)
            self.columns = [r[1] for r in db.execute("PRAGMA table_info(runs)") if r[1] != "id"]
            self.run = list(
                db.execute(
                    f"SELECT {', '.join(self.columns)} FROM runs WHERE run_id = ?", (run_id,)
                ).fetchone()
            )
            self.outputs = db.execute(
                "SELECT node_id, attempt, output FROM node_outputs WHERE run_id = ?", (run_id,)
            ).fetchall()
            events = db.execute(
                "SELECT seq, type, severity, workflow_id, node_id, engine_id, data FROM events "
                "WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
            columns = self.columns
        finally:
            db.close()
        # Sequence numbers relative to the run's first: a folded row refers to its start's
        # number by its offset, so copies keep the gaps.
        seqs = [x[0] for e in events for x in expand(e[0], 0.0, e[1], e[5], e[6])]
        self.events = [(e[0] - min(seqs), *e[1:]) for e in events]
        self.seqs = max(seqs) - min(seqs) + 1
        self.id_col = columns.index("run_id")
        self.times = [columns.index(c) for c in ("created_at", "started_at", "finished_at")]
        self.width = len(columns)

    @classmethod
    def of_a_real_run(cls, folder: Path) -> Template:
        """The rows of one run of the 3-node workflow through an orchestrator on a file store
        in ``folder`` (``seed.db``)."""
        seed = folder / "seed.db"
        with Orchestrator(store=str(seed), config=Config(store_path=str(seed))) as orch:
            orch.register_workflow("bench-3", "1.0.0", workflow())
            run = orch.execute_workflow("bench-3", inputs={"factor": 2})
            orch.store.flush()
            return cls(str(seed), run.run_id)

    def write(self, db: sqlite3.Connection, prefix: str, count: int, t0: float, t1: float) -> None:
        """``count`` copies with ids ``prefix<n>``, their times spread over ``[t0, t1)``."""
        base = int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM event_rows").fetchone()[0])
        runs: list[list[Any]] = []
        outputs: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for n in range(count):
            run_id = f"{prefix}{n:08d}"
            when = t0 + (t1 - t0) * n / count
            row = list(self.run)
            row[self.id_col] = run_id
            for offset, col in enumerate(self.times):
                row[col] = when + offset * 0.001
            runs.append(row)
            outputs.extend((run_id, *o) for o in self.outputs)
            events.extend(
                (base + e[0], when, e[1], e[2], e[3], run_id, *e[4:]) for e in self.events
            )
            base += self.seqs
        marks = ", ".join("?" * self.width)
        db.executemany(f"INSERT INTO runs ({', '.join(self.columns)}) VALUES ({marks})", runs)
        db.executemany(
            "INSERT INTO node_outputs (run_id, node_id, attempt, output) VALUES (?, ?, ?, ?)",
            outputs,
        )
        db.executemany(  # (as the store writes them: by the run's number)
            "INSERT INTO event_rows (seq, time, type, severity, workflow_id, run_key, node_id, "
            "engine_id, data) VALUES (?, ?, ?, ?, ?, (SELECT id FROM runs WHERE run_id = ?), "
            "?, ?, ?)",
            events,
        )

    @property
    def rows(self) -> int:
        return 1 + len(self.outputs) + len(self.events)


def file_size(store: Store) -> int:
    """The database file's size once the log is checkpointed into it."""
    store.flush()
    with store._lock:
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return os.path.getsize(store.path)


def prune_fully(store: Store, policy: RetentionPolicy, now: float) -> tuple[int, int]:
    """Prune as the background pruner does; returns (runs deleted, batches)."""
    runs = batches = 0
    while True:
        part = store.prune(policy, now=now)
        runs += part.runs
        batches += 1
        if part.runs < 500:
            break
    while store.reclaim_space():
        continue
    return runs, batches


#: The tables and indexes :func:`bytes_per_run` breaks the bytes down by.
_PARTS = (
    "runs",
    "sqlite_autoindex_runs_1",
    "runs_by_created",
    "runs_by_workflow",
    "runs_by_status",
    "runs_by_parent",
    "node_outputs",
    "sqlite_autoindex_node_outputs_1",
    "event_rows",
    "event_rows_by_run",
    "event_rows_by_run_id",
    "event_rows_by_workflow",
)


def bytes_per_run(folder: Path, runs: int) -> list[str]:
    """``runs`` real runs of the workflow (8 in flight) through an orchestrator on a file
    store, then the file's bytes per run after a VACUUM, by table and index (dbstat)."""
    path = folder / "bytes.db"
    with Orchestrator(store=str(path), config=Config(store_path=str(path))) as orch:
        orch.register_workflow("bench-3", "1.0.0", workflow())
        drive("bytes", lambda _: orch.execute_workflow("bench-3", inputs={"factor": 2}), 8, runs)
        orch.store.flush()
    db = sqlite3.connect(path)
    try:
        db.execute("VACUUM")
        count = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        rows = db.execute("SELECT COUNT(*) FROM event_rows").fetchone()[0]
        parts = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
    finally:
        db.close()
    size = os.path.getsize(path)
    lines = [
        f"bytes: {count:,} runs through the orchestrator, file after VACUUM: "
        f"{size / count:,.0f} bytes a run ({rows / count:.1f} event rows a run)"
    ]
    lines += [f"  {name:<32} {parts[name] / count:>7,.0f}" for name in _PARTS if name in parts]
    return lines


def pg_bytes_per_run(url: str, runs: int) -> list[str]:
    """``runs`` real runs of the workflow (8 in flight) through an orchestrator on a fresh
    PostgreSQL schema, then ``pg_total_relation_size`` of each table (indexes and TOAST
    included) after ``VACUUM FULL``, per run."""
    from urllib.parse import quote

    import psycopg

    schema = "bench_retention_bytes"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    target = f"{url}{'&' if '?' in url else '?'}options={quote(f'-c search_path={schema}')}"
    with Orchestrator(config=Config(store_path=target)) as orch:
        orch.register_workflow("bench-3", "1.0.0", workflow())
        drive("bytes", lambda _: orch.execute_workflow("bench-3", inputs={"factor": 2}), 8, runs)
        orch.store.flush()
    with psycopg.connect(target, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
            )
        ]
        for table in tables:
            conn.execute(f"VACUUM FULL {table}")
        count = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        sizes = {
            table: conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
            for table in tables
        }
        rows = {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("events", "node_outputs")
        }
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    # (Since schema version 6 the events are rows of event_rows, keyed by the run's number;
    # events is a view of them.)
    sizes.setdefault("events", sizes.get("event_rows", 0))
    total = sum(sizes[t] for t in ("runs", "node_outputs", "events"))
    lines = [
        f"postgres bytes: {count:,} runs through the orchestrator, runs + node_outputs + "
        f"events after VACUUM FULL: {total / count:,.0f} bytes a run "
        f"({rows['events'] / count:.1f} event rows, {rows['node_outputs'] / count:.1f} "
        "output rows a run)"
    ]
    lines += [
        f"  {table:<32} {sizes[table] / count:>7,.0f}"
        for table in ("runs", "node_outputs", "events")
    ]
    return lines


def plateau(template: Template, folder: Path, days: int, per_day: int) -> list[str]:
    lines = [
        f"plateau: {per_day:,} runs/day for {days} days, 7-day retention "
        f"({template.rows} rows a run)",
        f"{'day':>4} {'runs kept':>10} {'deleted':>9} {'file MB':>9} {'bytes/run':>10}",
    ]
    start = 1_000 * DAY  # the virtual clock
    policy = RetentionPolicy(RETENTION)
    sizes = []
    with Store(folder / "plateau.db") as store:
        for day in range(days):
            t0 = start + day * DAY
            with store.transaction():
                template.write(store._db, f"d{day:03d}-", per_day, t0, t0 + DAY)
            deleted, _ = prune_fully(store, policy, t0 + DAY)
            kept = store.stats().tables["runs"][0]
            size = file_size(store)
            sizes.append(size)
            lines.append(
                f"{day + 1:>4} {kept:>10,} {deleted:>9,} {size / 1e6:>9.1f} {size / kept:>10,.0f}"
            )
    top = max(sizes[7:]) if len(sizes) > 7 else max(sizes)
    lines.append(
        f"plateau: {top / 1e6:.1f} MB from day 8 on (max of days 8-{days}); "
        f"without retention: ~{sizes[6] / 7 * days / 1e6:.0f} MB"
    )
    return lines


def gated(store: Store, gate: threading.Event) -> dict[str, list[float]]:
    """Make ``store``'s prune batches and reclaim steps wait for ``gate`` (the pruner then
    pauses while it is clear), and record how long each holds the store's lock."""
    held: dict[str, list[float]] = {"prune batch": [], "reclaim step": []}
    prune, reclaim = store.prune, store.reclaim_space

    def timed_prune(*args: Any, **kwargs: Any) -> Any:
        gate.wait()
        report = prune(*args, **kwargs)
        held["prune batch"].append(report.seconds)
        return report

    def timed_reclaim(*args: Any, **kwargs: Any) -> Any:
        gate.wait()
        began = time.perf_counter()
        freed = reclaim(*args, **kwargs)
        held["reclaim step"].append(time.perf_counter() - began)
        return freed

    store.prune = timed_prune  # type: ignore[method-assign]
    store.reclaim_space = timed_reclaim  # type: ignore[method-assign]
    return held


class _CatchUps:
    """Counts the checkpoints a commit finished itself (``WriteBehind._catch_up``: the log
    passed ``CHECKPOINT_CATCH_UP_FRAMES``), by the kind of window they fell in: such a
    checkpoint runs in the commit of whatever write came next, under the store's lock."""

    def __init__(self, store: Store) -> None:
        self.window = "paused"
        self.counts = {"paused": 0, "running": 0}
        counter = self

        class Counting(type(store)):  # type: ignore[misc]
            @property
            def _catch_up(self) -> bool:
                return bool(self.__dict__.get("_catch_up_flag", False))

            @_catch_up.setter
            def _catch_up(self, value: bool) -> None:
                if self.__dict__.get("_catch_up_flag") and not value:
                    counter.counts[counter.window] += 1
                self.__dict__["_catch_up_flag"] = value

        flag = store.__dict__.pop("_catch_up", False)
        store.__class__ = Counting
        store.__dict__["_catch_up_flag"] = flag


def _merged(name: str, loads: list[Load]) -> Load:
    return Load(
        name,
        8,
        sum(d.calls for d in loads),
        sum(d.seconds for d in loads),
        [x for d in loads for x in d.latencies],
    )


def latency(
    template: Template, folder: Path, backlog: int, rate: float, window: float
) -> list[str]:
    path = folder / "latency.db"
    t0 = time.time() - 40 * DAY
    with Store(path) as store:  # the backlog goes in before the orchestrator numbers events
        for start in range(0, backlog, 10_000):
            count = min(10_000, backlog - start)
            with store.transaction():
                template.write(store._db, f"old{start:08d}-", count, t0, t0 + DAY)
    config = Config(store_path=str(path), retention=None, prune_interval=3600)
    orch = Orchestrator(config=config)
    lines: list[str] = []
    try:
        orch.register_workflow("bench-3", "1.0.0", workflow())
        size_before = file_size(orch.store)

        def call(_: int) -> object:
            return orch.execute_workflow("bench-3", inputs={"factor": 2})

        drive("warm-up", call, 8, 500, rate=rate)
        gate = threading.Event()
        held = gated(orch.store, gate)
        catch_ups = _CatchUps(orch.store)
        pruner = Pruner(orch.store, None, lambda: RetentionPolicy(RETENTION))
        outcome: dict[str, Any] = {}

        def prune() -> None:
            began = time.perf_counter()
            outcome["report"] = pruner.run_pass()
            outcome["seconds"] = time.perf_counter() - began

        thread = threading.Thread(target=prune)
        thread.start()
        # Windows without and with the pruner running, alternately, until it is done: the
        # machine's load (shared) drifts alike for both.
        calls = max(1, int(rate * window))
        without: list[Load] = []
        during: list[Load] = []
        loads: list[float] = []
        while thread.is_alive() or not during:
            catch_ups.window = "paused"
            without.append(drive("no prune", call, 8, calls, rate=rate))
            gate.set()
            catch_ups.window = "running"
            during.append(drive("prune", call, 8, calls, rate=rate))
            gate.clear()
            loads.append(os.getloadavg()[0])
        gate.set()
        thread.join()
        base, merged = _merged("no prune", without), _merged("during prune", during)
        report = outcome["report"]
        size_after = file_size(orch.store)
        rows = backlog * template.rows
        lines.append(
            f"latency: {rate:.0f} runs/s offered, 8 in flight; backlog {backlog:,} runs "
            f"({rows:,} rows) back-dated 40 days; {len(during)} pairs of {window:.0f} s "
            f"windows without / with the pruner; load average {min(loads):.1f}-{max(loads):.1f}"
        )
        lines.append(f"{'':<14} {'runs':>7} {'p50 ms':>8} {'p99 ms':>8}")
        for load in (base, merged):
            lines.append(
                f"{load.name:<14} {load.calls:>7,} {load.pct(0.5) * 1e3:>8.2f} "
                f"{load.pct(0.99) * 1e3:>8.2f}"
            )
        ratio = merged.pct(0.99) / base.pct(0.99)
        lines.append(
            f"p99 during prune / without: {ratio:.2f} "
            f"({'met' if ratio <= 1.2 else 'NOT MET'}: target <= 1.20)"
        )
        pairs = sorted(d.pct(0.99) / w.pct(0.99) for w, d in zip(without, during, strict=True))
        lines.append(
            f"per pair of windows, p99 with / without: median {pairs[len(pairs) // 2]:.2f}, "
            f"quartiles {pairs[len(pairs) // 4]:.2f}-{pairs[3 * len(pairs) // 4]:.2f}"
        )
        lines.append(
            "checkpoints finished by a commit (the log past its catch-up mark): "
            f"{catch_ups.counts['paused']} in paused windows, "
            f"{catch_ups.counts['running']} in running ones"
        )
        for step, times in held.items():
            ordered = sorted(times) or [0.0]
            lines.append(
                f"store held by {step}: {len(times):,} steps, p50 "
                f"{ordered[len(ordered) // 2] * 1e3:.2f} ms, p99 "
                f"{ordered[int(len(ordered) * 0.99)] * 1e3:.2f} ms, max {ordered[-1] * 1e3:.2f} ms"
            )
        lines.append(
            f"prune: {report.runs:,} runs, {report.node_outputs:,} outputs, "
            f"{report.events:,} events in {report.batches} batches, {outcome['seconds']:.1f} s "
            f"(half of it paused); file {size_before / 1e6:.1f} MB -> {size_after / 1e6:.1f} MB"
        )
    finally:
        orch.stop()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-per-day", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=112_000, help="~1 million rows")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--window", type=float, default=2.0, help="seconds of each window")
    parser.add_argument("--bytes-runs", type=int, default=10_000, help="runs measured for bytes")
    parser.add_argument("--only", choices=["bytes", "pg-bytes", "plateau", "latency"], default=None)
    parser.add_argument("--pg-bytes-runs", type=int, default=5000, help="runs measured on PG")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs_per_day, args.days, args.backlog = 500, 12, 10_000
        args.bytes_runs = args.pg_bytes_runs = 2000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        template = Template.of_a_real_run(folder)
        pg_url = os.environ.get("DAGENGINE_TEST_POSTGRES_URL")
        parts = {
            "bytes": lambda: bytes_per_run(folder, args.bytes_runs),
            "pg-bytes": lambda: (
                pg_bytes_per_run(pg_url, args.pg_bytes_runs)
                if pg_url
                else ["postgres bytes: skipped (no DAGENGINE_TEST_POSTGRES_URL)"]
            ),
            "plateau": lambda: plateau(template, folder, args.days, args.runs_per_day),
            "latency": lambda: latency(template, folder, args.backlog, args.rate, args.window),
        }
        for name, part in parts.items():
            if args.only in (None, name):
                for line in part():
                    print(line, flush=True)
                print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
