"""SQLite migration 4 (issue 23): events keyed by their run's number instead of its id. An
old store converts without losing a row (nor its node outputs: the rebuild of ``runs`` must
not cascade); events read back with their run's id through the store and through the
``events`` view that raw SQL uses; an event written before its run's row keeps the id and
still reads and prunes with its run."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from dagengine.orchestrator.store import RunRecord, Store
from dagengine.orchestrator.store.retention import RetentionPolicy
from dagengine.orchestrator.store.schema import MIGRATIONS


def old_store(path: Path) -> None:
    """A store at schema version 3 (before the keys) with two runs, outputs, and events of
    both runs, of a run that has no row, and of no run."""
    db = sqlite3.connect(path)
    for statement in [s for migration in MIGRATIONS[:3] for s in migration]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 3")
    for n, status in ((1, "succeeded"), (2, "running")):
        db.execute(
            "INSERT INTO runs (run_id, workflow_id, version, status, inputs, attempt, "
            "resolved_versions, created_at, parent_run_id) "
            "VALUES (?, 'wf', '1', ?, '{}', 1, '{}', ?, ?)",
            (f"r{n}", status, float(n), "r1" if n == 2 else None),
        )
        db.execute(
            "INSERT INTO node_outputs (run_id, node_id, attempt, output, position) "
            "VALUES (?, 'a', 1, ?, ?)",
            (f"r{n}", json.dumps({"n": n}), n),
        )
    rows = [
        (1, 1.0, "run.queued", "wf", "r1", None, '{"version":"1"}'),
        (3, 3.0, "node.started+succeeded", "wf", "r1", "a", "[1,2.5,2]"),
        (4, 4.0, "run.queued", "wf", "r2", None, "{}"),
        (5, 5.0, "run.queued", "wf", "ghost", None, "{}"),
        (6, 6.0, "engine.joined", None, None, None, '{"capacity":1}'),
    ]
    db.executemany(
        "INSERT INTO events (seq, time, type, severity, workflow_id, run_id, node_id, "
        "engine_id, data) VALUES (?, ?, ?, 0, ?, ?, ?, 'e', ?)",
        rows,
    )
    db.commit()
    db.close()


def events_of(store: Store, **filters: Any) -> list[tuple[Any, ...]]:
    return [(e.seq, e.type, e.run_id, e.node_id) for e in store.events(**filters)]


def test_an_old_store_converts_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    old_store(path)
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert events_of(store) == [
            (1, "run.queued", "r1", None),
            (2, "node.started", "r1", "a"),
            (3, "node.succeeded", "r1", "a"),
            (4, "run.queued", "r2", None),
            (5, "run.queued", "ghost", None),
            (6, "engine.joined", None, None),
        ]
        assert events_of(store, run_id="r1") == [
            (1, "run.queued", "r1", None),
            (2, "node.started", "r1", "a"),
            (3, "node.succeeded", "r1", "a"),
        ]
        assert events_of(store, run_id="ghost") == [(5, "run.queued", "ghost", None)]
        # Rebuilding runs did not cascade to their outputs; the parent link still holds.
        assert store.node_outputs("r1") == {"a": {"n": 1}}
        assert store.node_outputs("r2") == {"a": {"n": 2}}
        assert [r.run_id for r in store.list_runs(parent_run_id="r1")] == ["r2"]
        assert [r.run_id for r in store.list_runs()] == ["r2", "r1"]
        # New events go on after the converted ones.
        seq = store.append_event(None, "run.started", run_id="r2", workflow_id="wf")
        assert seq == 7
        assert events_of(store, run_id="r2") == [
            (4, "run.queued", "r2", None),
            (7, "run.started", "r2", None),
        ]
        with store._lock:
            keys = store._db.execute("SELECT run_key, run_id FROM event_rows ORDER BY seq")
            stored = keys.fetchall()
            fk = store._db.execute("PRAGMA foreign_keys").fetchone()[0]
        assert stored == [(1, None), (1, None), (2, None), (None, "ghost"), (None, None), (2, None)]
        assert fk == 1


def test_raw_sql_reads_and_writes_events_through_the_view(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.create_run(RunRecord("r1", "wf", "1", "queued", {}, created_at=time.time()))
        store.append_event(None, "run.queued", workflow_id="wf", run_id="r1")
    db = sqlite3.connect(path)
    assert db.execute("SELECT run_id, type FROM events").fetchall() == [("r1", "run.queued")]
    db.execute(
        "INSERT INTO events (time, type, severity, workflow_id, run_id, data) "
        "VALUES (1.0, 'run.started', 0, 'wf', 'r1', '{}')"
    )
    db.execute("DELETE FROM events WHERE type = 'run.queued'")
    db.commit()
    assert db.execute("SELECT run_key, run_id FROM event_rows").fetchall() == [(1, None)]
    db.close()
    with Store(path) as store:
        assert events_of(store, run_id="r1") == [(2, "run.started", "r1", None)]


def test_event_ids_survive_a_vacuum_after_runs_go(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        for n in range(5):
            store.create_run(RunRecord(f"r{n}", "wf", "1", "queued", {}, created_at=float(n)))
            store.append_event(None, "run.queued", workflow_id="wf", run_id=f"r{n}")
        with store.transaction():
            store._db.execute("DELETE FROM runs WHERE run_id IN ('r0', 'r4')")
    db = sqlite3.connect(path)
    db.execute("VACUUM")
    db.close()
    with Store(path) as store:
        assert [e.run_id for e in store.events(types=["run.queued"])] == [
            None,  # (the events of r0 and r4, their runs deleted by hand)
            "r1",
            "r2",
            "r3",
            None,
        ]
        store.create_run(RunRecord("r5", "wf", "1", "queued", {}, created_at=5.0))
        # A deleted run's number is never given to a new run (r4's events stay r4's).
        assert events_of(store, run_id="r5") == []
        assert [e.run_id for e in store.events()][-1] is None


def test_events_written_before_their_run_read_and_prune_with_it() -> None:
    with Store() as store:
        store.append_event(5.0, "run.queued", workflow_id="wf", run_id="early")
        record = RunRecord("early", "wf", "1", "queued", {}, created_at=5.0)
        store.create_run(record)
        store.append_event(6.0, "run.started", workflow_id="wf", run_id="early")
        assert events_of(store, run_id="early") == [
            (1, "run.queued", "early", None),
            (2, "run.started", "early", None),
        ]
        store.finish_run("early", None, "succeeded")
        report = store.prune(RetentionPolicy(1.0), now=time.time() + 10)
        assert (report.runs, report.events) == (1, 2)
        assert store.events() == []


def test_old_events_of_runs_that_have_no_row_are_pruned() -> None:
    with Store() as store:
        store.append_event(1.0, "run.queued", workflow_id="wf", run_id="ghost")
        store.create_run(RunRecord("alive", "wf", "1", "running", {}, created_at=1.0))
        with store.transaction():  # an event stored by id although its run has a row
            store._db.execute(
                "INSERT INTO event_rows (time, type, severity, run_id, data) "
                "VALUES (1.0, 'x', 0, 'alive', '{}')"
            )
        policy = RetentionPolicy(10.0)
        assert store.prune(policy, now=100.0, dry_run=True).events == 1
        assert store.prune(policy, now=100.0).events == 1
        assert events_of(store) == [(2, "x", "alive", None)]
