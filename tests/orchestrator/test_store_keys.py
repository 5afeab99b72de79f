"""SQLite migration 4 (issue 23): events keyed by their run's number instead of its id. An
old store converts without losing a row (nor its node outputs: the rebuild of ``runs`` must
not cascade); events read back with their run's id through the store and through the
``events`` view that raw SQL uses; an event written before its run's row keeps the id and
still reads and prunes with its run."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine.orchestrator.store import PostgresStore, RunRecord, Store, open_store
from dagengine.orchestrator.store.retention import RetentionPolicy
from dagengine.orchestrator.store.schema import MIGRATIONS
from dagengine.orchestrator.store.sqlite import SQLiteStore
from pg import query

AnyStore = Store | PostgresStore


def old_store(path: Path) -> None:
    """A store at schema version 3 (before the keys) with two runs, outputs, and events of
    both runs, of a run that has no row, and of no run."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # (as the store creates a file)
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
        # The old tables' pages went back to the file system.
        assert store.stats().free_bytes == 0


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
    db = sqlite3.connect(path)
    # (By hand, on a connection of its own: a store's connection deletes a run's events with
    # it, as a prune does.)
    db.execute("DELETE FROM runs WHERE run_id IN ('r0', 'r4')")
    db.commit()
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


# -- a succeeded run's node outputs kept once, in its result -----------------------------------


def node(output: Any) -> dict[str, Any]:
    return {
        "status": "succeeded",
        "output": output,
        "error": None,
        "attempts": 1,
        "started_at": 1.0,
        "finished_at": 2.0,
    }


def result_of(run_id: str, outputs: dict[str, Any], status: str = "succeeded") -> dict[str, Any]:
    nodes = {nid: node(out) for nid, out in outputs.items()}
    return {
        "run_id": run_id,
        "status": status,
        "error": None,
        "duration": 0.5,
        "outputs": {nid: out or {} for nid, out in outputs.items()},
        "nodes": nodes,
    }


def end_run(
    store: AnyStore,
    run_id: str,
    stored: list[tuple[str, str]],
    result: dict[str, Any],
    status: str = "succeeded",
    followed: bool = False,
) -> list[bool]:
    """A run whose nodes stored ``stored`` (node, output JSON) in that order, ended later
    with ``result``; returns what the end's callback was told. ``followed``: created and
    claimed later, as the orchestrator does (its end knows the outputs it queued)."""
    record = RunRecord(run_id, "wf", "1", "queued", {}, created_at=1.0)
    if followed:
        store.create_run_later(record)
        attempt = 1
        store.claim_attempt_later(run_id, "local", attempt)
    else:
        store.create_run(record)
        attempt = store.claim_attempt(run_id, "local")
    for node_id, output in stored:
        store.save_node_output_json_later(run_id, node_id, attempt, output)
    store.flush()  # (the outputs come in an earlier group than the end, as they usually do)
    told: list[bool] = []
    store.finish_run_later(run_id, attempt, status, json.dumps(result), None, told.append)
    store.flush()
    store._run_ready()
    return told


def output_rows(target: str, run_id: str) -> int:
    return int(query(target, f"SELECT COUNT(*) FROM node_outputs WHERE run_id = '{run_id}'")[0][0])


@pytest.fixture
def store(store_target: str) -> Iterator[AnyStore]:
    s = open_store(store_target)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("followed", [False, True])
def test_a_succeeded_runs_outputs_are_kept_once_in_its_result(
    store: AnyStore, store_target: str, followed: bool
) -> None:
    stored = [("b", '{"x":1}'), ("a", '{"y":[1,2]}'), ("c", "{}")]
    result = result_of("r1", {"b": {"x": 1}, "a": {"y": [1, 2]}, "c": None})
    assert end_run(store, "r1", stored, result, followed=followed) == [True]
    # (PostgreSQL keeps the rows: comparing them in the statement that ends the run cost
    # its server more than the rows did.)
    assert output_rows(store_target, "r1") == (3 if isinstance(store, PostgresStore) else 0)
    outputs = store.node_outputs("r1")
    assert outputs == {"b": {"x": 1}, "a": {"y": [1, 2]}, "c": {}}
    assert list(outputs) == ["b", "a", "c"]
    record = store.get_run("r1")
    assert record is not None
    assert record.result == result


@pytest.mark.parametrize(
    "stored",
    [
        [("a", '{"x":2}'), ("b", "{}")],  # another value
        [("a", '{"x":1.0}'), ("b", "{}")],  # reads back as another value
        [("b", "{}"), ("a", '{"x":1}')],  # another order
        [("a", '{"x":1}')],  # one missing
        [("a", '{"x":1}'), ("b", "{}"), ("z", "{}")],  # one more
        [],  # none stored
    ],
)
@pytest.mark.parametrize("followed", [False, True])
def test_outputs_that_are_not_exactly_the_results_stay(
    store: AnyStore, store_target: str, stored: list[tuple[str, str]], followed: bool
) -> None:
    result = result_of("r1", {"a": {"x": 1}, "b": None})
    end_run(store, "r1", stored, result, followed=followed)
    assert output_rows(store_target, "r1") == len(stored)
    expected = {node_id: json.loads(output) for node_id, output in stored}
    assert store.node_outputs("r1") == expected
    assert list(store.node_outputs("r1")) == list(expected)
    record = store.get_run("r1")
    assert record is not None
    assert record.result == result


def statements_of(store: SQLiteStore, action: Callable[[], object]) -> list[str]:
    """The SQL statements the store ran during ``action``."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        action()
    finally:
        store._db.set_trace_callback(None)
    return seen


def reads_rows_back(statements: list[str]) -> bool:
    return any("json_group_array(json_array(run_id" in sql for sql in statements)


def test_a_followed_runs_end_drops_its_rows_without_reading_them_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        result = result_of("r1", {"a": {"x": 1}, "b": None})
        stored = [("a", '{"x": 1}'), ("b", "{}")]  # (other text, the same values)
        seen = statements_of(store, lambda: end_run(store, "r1", stored, result, followed=True))
        assert not reads_rows_back(seen)
        assert any(sql.startswith("DELETE FROM node_outputs") for sql in seen)
        assert output_rows(store.path, "r1") == 0
        assert store.node_outputs("r1") == {"a": {"x": 1}, "b": {}}
        # A run this store did not follow from its creation is compared with its rows.
        other = result_of("r2", {"a": {"x": 1}, "b": None})
        seen = statements_of(store, lambda: end_run(store, "r2", stored, other))
        assert reads_rows_back(seen)
        assert output_rows(store.path, "r2") == 0
    finally:
        store.close()


def test_a_retried_attempt_is_compared_with_its_rows(tmp_path: Path) -> None:
    """A second attempt may find rows of the first, which the store did not queue."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.create_run_later(RunRecord("r1", "wf", "1", "queued", {}, created_at=1.0))
        store.claim_attempt_later("r1", "local", 1)
        store.save_node_output_json_later("r1", "a", 1, '{"x":1}')
        store.release_run("r1", 1)
        attempt = store.claim_attempt("r1", "local")
        store.save_node_output_json_later("r1", "b", attempt, "{}")
        result = result_of("r1", {"b": None})  # (a result without the first attempt's node)
        told: list[bool] = []

        def end() -> None:
            store.finish_run_later(
                "r1", attempt, "succeeded", json.dumps(result), None, told.append
            )
            store.flush()
            store._run_ready()

        assert reads_rows_back(statements_of(store, end))
        assert told == [True]
        assert output_rows(store.path, "r1") == 2
        assert store.node_outputs("r1") == {"a": {"x": 1}, "b": {}}
    finally:
        store.close()


def test_a_failed_runs_outputs_stay_for_its_retry(store: AnyStore, store_target: str) -> None:
    result = result_of("r1", {"a": {"x": 1}}, status="failed")
    end_run(store, "r1", [("a", '{"x":1}')], result, status="failed")
    assert output_rows(store_target, "r1") == 1
    assert store.node_outputs("r1") == {"a": {"x": 1}}


def test_a_refused_end_marks_nothing(store: AnyStore, store_target: str) -> None:
    first = result_of("r1", {"a": {"x": 2}})  # not the stored output: the rows stay
    assert end_run(store, "r1", [("a", '{"x":1}')], first) == [True]
    late = result_of("r1", {"a": {"x": 1}})  # the stored output, but refused (finished)
    told: list[bool] = []
    store.finish_run_later("r1", 1, "succeeded", json.dumps(late), None, told.append)
    store.flush()
    store._run_ready()
    assert told == [False]
    assert output_rows(store_target, "r1") == 1
    assert store.node_outputs("r1") == {"a": {"x": 1}}
    record = store.get_run("r1")
    assert record is not None
    assert record.result == first


def test_an_export_holds_the_outputs_kept_in_the_result(store: AnyStore, tmp_path: Path) -> None:
    result = result_of("r1", {"a": {"x": 1}})
    end_run(store, "r1", [("a", '{"x":1}')], result)
    report = store.prune(RetentionPolicy(1.0, export_dir=str(tmp_path)), now=time.time() + 9)
    assert report.runs == 1
    (exported,) = tmp_path.glob("runs-*.jsonl")
    assert json.loads(exported.read_text())["node_outputs"] == {"a": {"x": 1}}


def test_runs_through_the_orchestrator_read_the_same_outputs(store_target: str) -> None:
    from dagengine import DAG, LuaExecutor, Node
    from dagengine.orchestrator import Config, Orchestrator

    dag = DAG("w", "1.0.0")
    dag.add_node(Node("a", [], LuaExecutor("return {rows = {1, 2}}")))
    for name in ("b", "c", "d"):  # in parallel
        dag.add_node(Node(name, ["a"], LuaExecutor(f"return {{n = '{name}'}}")))
    dag.add_node(Node("e", ["b", "c", "d"], LuaExecutor("return {}")))
    path = store_target
    with Orchestrator(config=Config(store_path=path)) as orch:
        orch.register_workflow("w", "1.0.0", dag)
        results = [orch.execute_workflow("w", inputs={}) for _ in range(5)]
        for result in results:
            assert result.ok
            outputs = orch.store.node_outputs(result.run_id)
            assert outputs == result.outputs
            assert outputs["a"] == {"rows": [1, 2]}
            assert outputs["e"] == {}
            order = list(outputs)
            assert (order[0], order[-1]) == ("a", "e")
        orch.store.flush()
        rows = query(path, "SELECT COUNT(*) FROM node_outputs")[0][0]
        # Each kept once, in its run's result (SQLite; PostgreSQL keeps the rows).
        assert rows == (25 if isinstance(orch.store, PostgresStore) else 0)


def test_the_outputs_a_store_follows_are_bounded() -> None:
    from dagengine.orchestrator.store.compact import OutputsSeen

    expected = [("a", '{"x":1}')]
    seen = OutputsSeen(limit=2, budget=20)
    seen.created("r1")
    seen.output("r1", "a", 1, '{"x":1}')
    assert seen.ended("r1", 1, expected) is True
    assert seen.ended("r1", 1, expected) == expected  # (no longer followed: compared)
    for run in ("r1", "r2", "r3"):  # the oldest is forgotten past the limit
        seen.created(run)
        seen.output(run, "a", 1, '{"x":1}')
    assert seen.ended("r1", 1, expected) == expected
    assert seen.ended("r2", 1, expected) is True
    seen.created("big")
    seen.output("big", "a", 1, '{"x":"' + "y" * 20 + '"}')  # past the budget: forgotten
    assert seen.ended("big", 1, expected) == expected
    assert seen._held == len('{"x":1}')  # r3's only
    seen.output("r3", "b", 2, "{}")  # another attempt's output: forgotten
    assert seen.ended("r3", 1, expected) == expected
    assert seen._held == 0
    seen.created("r4")
    seen.output("r4", "a", 1, '{"x":2}')
    assert seen.ended("r4", 1, expected) is None  # known not to be the result's
