"""Compact history (issue 23): folded node events, payloads by number and results without
repeats read back exactly as they were written, page by page and through every filter;
rows written before the compaction still read; a prune counts and exports the events,
not the rows."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine.orchestrator.store import PostgresStore, RunRecord, Store, open_store
from dagengine.orchestrator.store.compact import FOLD_SPAN, FOLDED, PAYLOADS
from dagengine.orchestrator.store.retention import RetentionPolicy
from dagengine.orchestrator.store.schema import MIGRATIONS
from pg import query

Event = tuple[float, str, str, str | None, str | None, str | None, str | None, Any]


def node_events(run: str, node: str, t: float, *, attempt: int = 1) -> list[Event]:
    data = {"attempt": attempt, "node_attempt": 1}
    return [
        (t, "node.started", "info", "wf", run, node, "local", data),
        (t + 0.5, "node.succeeded", "info", "wf", run, node, "local", data),
    ]


def mixed_events() -> list[Event]:
    """Two runs' events interleaved, with starts folded and a start that cannot be."""
    events: list[Event] = [
        (1.0, "run.queued", "info", "wf", "r1", None, None, {"version": "1.0.0"}),
        (1.5, "run.started", "info", "wf", "r1", None, "local", {"attempt": 1}),
    ]
    events += node_events("r1", "a", 2.0)
    a, b = node_events("r1", "b", 3.0), node_events("r2", "x", 3.1, attempt=2)
    events += [a[0], b[0], a[1], b[1]]
    events.append((4.0, "node.started", "info", "wf", "r1", "c", "local", {"attempt": 1}))
    events.append(
        (
            4.5,
            "node.failed",
            "error",
            "wf",
            "r1",
            "c",
            "local",
            {"attempt": 1, "node_attempt": 1, "error": {"type": "E", "message": "m"}},
        )
    )
    # A start whose end carries another payload folds, both payloads kept.
    events.append((5.0, "node.started", "info", "wf", "r1", "d", "local", {"attempt": 1}))
    events.append((5.5, "node.succeeded", "info", "wf", "r1", "d", "local", {"attempt": 2}))
    events.append((6.0, "engine.joined", "info", None, None, None, "e1", {"address": "x"}))
    events.append((7.0, "run.completed", "info", "wf", "r1", None, "local", {"duration": 1.25}))
    return events


def as_tuples(records: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (r.seq, r.time, r.type, r.severity, r.workflow_id, r.run_id, r.node_id, r.engine_id, r.data)
        for r in records
    ]


def expected(first: int, events: list[Event]) -> list[tuple[Any, ...]]:
    return [(first + i, *event) for i, event in enumerate(events)]


def stored_rows(target: str) -> list[tuple[Any, ...]]:
    return query(target, "SELECT seq, type, data FROM events ORDER BY seq")


@pytest.fixture
def store(store_target: str) -> Iterator[Store | PostgresStore]:
    """A store of each backend (PostgreSQL folds too, unless it is a replica's)."""
    s = open_store(store_target)
    try:
        yield s
    finally:
        s.close()


def test_node_starts_fold_into_their_ends_and_read_back_as_two_events(
    store: Store | PostgresStore, store_target: str
) -> None:
    events = mixed_events()
    first = store.append_events_later(events)
    store.flush()
    rows = stored_rows(store_target)
    kinds = [t for _, t, _ in rows]
    assert kinds.count(FOLDED) == 4  # a, b, x and d (not c: a failure is an error)
    assert kinds.count("run.queued+started") == 1
    assert len(rows) == len(events) - 5
    payloads = [d for _, _, d in rows]
    assert "[1,2.0,2]" in payloads  # a's pair: {"attempt":1,"node_attempt":1}
    # The run's pair: the start's own payload and engine follow the end's payload.
    assert '[1,1.0,1,{"version":"1.0.0"},null]' in payloads
    assert "[1,5.0,3,1]" in payloads  # d's pair: {"attempt":2} then {"attempt":1}
    assert "1" in payloads  # {"attempt":1} of c's start, which did not fold
    assert as_tuples(store.events()) == expected(first, events)


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 7, 100])
def test_pages_of_any_size_read_every_event_once_in_order(
    store: Store | PostgresStore, limit: int
) -> None:
    events = mixed_events()
    first = store.append_events_later(events)
    got: list[Any] = []
    after = 0
    while True:
        page = store.events(after=after, limit=limit)
        assert len(page) <= limit
        if not page:
            break
        got += page
        after = page[-1].seq
    assert as_tuples(got) == expected(first, events)


def test_filters_apply_to_each_event_of_a_folded_row(
    store: Store | PostgresStore, store_target: str
) -> None:
    events = mixed_events()
    first = store.append_events_later(events)
    everything = expected(first, events)

    def want(keep: Any) -> list[tuple[Any, ...]]:
        return [e for e in everything if keep(e)]

    assert as_tuples(store.events(types=["node.started"])) == want(lambda e: e[2] == "node.started")
    assert as_tuples(store.events(types=["node.succeeded", "run.queued"])) == want(
        lambda e: e[2] in ("node.succeeded", "run.queued")
    )
    assert as_tuples(store.events(run_id="r2")) == want(lambda e: e[5] == "r2")
    assert as_tuples(store.events(workflow_id="wf", after=first + 3)) == want(
        lambda e: e[4] == "wf" and e[0] > first + 3
    )
    assert as_tuples(store.events(min_severity="error")) == want(lambda e: e[3] == "error")
    # A page cut after a start, before its end: the start comes in this page, the end next.
    start_b = first + 4
    page = store.events(types=["node.started", "run.started"], limit=3)
    assert [r.seq for r in page] == [first + 1, first + 2, start_b]


def test_a_start_far_from_its_end_is_not_folded(
    store: Store | PostgresStore, store_target: str
) -> None:
    start, end = node_events("r1", "a", 1.0)
    filler = [(2.0, "engine.joined", "info", None, None, None, "e", {})] * FOLD_SPAN
    first = store.append_events_later([start, *filler, end])
    store.flush()
    assert FOLDED not in {t for _, t, _ in stored_rows(store_target)}
    assert as_tuples(store.events(run_id="r1")) == [
        (first, *start),
        (first + FOLD_SPAN + 1, *end),
    ]


def test_rows_written_before_the_compaction_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Store(path).close()
    old_result = {
        "run_id": "r1",
        "status": "succeeded",
        "error": None,
        "duration": 0.5,
        "outputs": {"a": {"x": 1}},
        "nodes": {"a": {"status": "succeeded", "output": {"x": 1}, "error": None}},
    }
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO runs (run_id, workflow_id, version, status, inputs, resolved_versions, "
        "created_at, result) VALUES ('r1', 'wf', '1', 'succeeded', '{}', '{}', 1.0, ?)",
        (json.dumps(old_result),),
    )
    payload = '{"attempt":1,"node_attempt":1}'
    db.executemany(
        "INSERT INTO events (seq, time, type, severity, workflow_id, run_id, node_id, "
        "engine_id, data) VALUES (?, ?, ?, 0, 'wf', 'r1', 'a', 'local', ?)",
        [(1, 1.0, "node.started", payload), (2, 2.0, "node.succeeded", payload)],
    )
    db.commit()
    db.close()
    with Store(path) as store:
        record = store.get_run("r1")
        assert record is not None
        assert record.result == old_result
        data = json.loads(payload)
        assert [(r.seq, r.type, r.data) for r in store.events()] == [
            (1, "node.started", data),
            (2, "node.succeeded", data),
        ]
        assert store.last_event_seq() == 2


def finished_run(store: Store, run_id: str, result: dict[str, Any], status: str) -> RunRecord:
    store.create_run(RunRecord(run_id, "wf", "1.0.0", created_at=1.0))
    attempt = store.claim_attempt(run_id, "local")
    assert store.finish_run(run_id, attempt, status, result=result)
    record = store.get_run(run_id)
    assert record is not None
    return record


def test_a_result_is_stored_without_repeats_and_read_back_whole() -> None:
    nodes = {
        "a": {"status": "succeeded", "output": {"x": 1}, "error": None, "attempts": 1},
        "b": {"status": "succeeded", "output": None, "error": None, "attempts": 1},
        "c": {"status": "skipped", "output": None, "error": None, "attempts": 0},
        "d": {
            "status": "failed",
            "output": None,
            "error": {"type": "E", "message": "m"},
            "attempts": 2,
            "started_at": 1.5,
            "finished_at": 2.5,
        },
        "e": {
            "status": "succeeded",
            "output": {"y": [1, None]},
            "error": None,
            "attempts": 1,
            "started_at": 1796579136.3755713,
            "finished_at": None,
        },
    }
    result = {
        "run_id": "r1",
        "status": "succeeded",
        "error": None,
        "duration": 0.25,
        "outputs": {"a": {"x": 1}, "b": {}, "e": {"y": [1, None]}},
        "nodes": nodes,
    }
    with Store() as store:
        record = finished_run(store, "r1", dict(result), "succeeded")
        assert record.result == result
        assert list(record.result) == list(result)
        with store._lock:
            stored = json.loads(
                store._db.execute("SELECT result FROM runs WHERE run_id = 'r1'").fetchone()[0]
            )
        assert not {"outputs", "run_id", "status", "error"} & set(stored)
        assert stored["nodes"]["d"] == ["failed", 2, 1.5, 2.5, None, {"type": "E", "message": "m"}]
        assert stored["nodes"]["e"] == ["succeeded", 1, 1796579136.3755713, None, {"y": [1, None]}]
        assert isinstance(stored["nodes"]["a"], dict)  # not the usual keys: kept as it is
        # Anything that is not exactly what the reader rebuilds is kept as it was.
        odd = {**result, "run_id": "r2", "outputs": {"a": {"x": 2}}}
        assert finished_run(store, "r2", odd, "succeeded").result == odd
        failed = {**result, "run_id": "r3", "status": "failed", "error": {"type": "E"}}
        assert finished_run(store, "r3", failed, "failed").result == failed
        other = {"something": [1, 2]}
        assert finished_run(store, "r4", other, "succeeded").result == other


def test_a_prune_counts_and_exports_events_not_rows(tmp_path: Path) -> None:
    with Store() as store:
        store.create_run(RunRecord("r1", "wf", "1.0.0", created_at=1.0))
        attempt = store.claim_attempt("r1", "local")
        events = [e for e in mixed_events() if e[4] == "r1"]
        store.append_events_later(events)
        store.finish_run("r1", attempt, "succeeded")
        policy = RetentionPolicy(10.0, export_dir=str(tmp_path))
        later = time.time() + 100.0
        dry = store.prune(policy, now=later, dry_run=True)
        assert (dry.runs, dry.events) == (1, len(events))
        report = store.prune(policy, now=later)
        assert (report.runs, report.events) == (1, len(events))
        (exported,) = tmp_path.glob("runs-*.jsonl")
        line = json.loads(exported.read_text())
        assert [(e["type"], e["time"], e["data"]) for e in line["events"]] == [
            (e[1], e[0], e[7]) for e in events
        ]
        assert [e["seq"] for e in line["events"]] == sorted(e["seq"] for e in line["events"])


def test_common_payloads_are_never_renumbered() -> None:
    # Stored rows refer to PAYLOADS by position: append only.
    assert PAYLOADS[:3] == ("{}", '{"attempt":1}', '{"attempt":1,"node_attempt":1}')
    assert all(text == json.dumps(json.loads(text), separators=(",", ":")) for text in PAYLOADS)


def test_migration_3_clusters_node_outputs_and_keeps_their_order(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    for statement in [s for migration in MIGRATIONS[:2] for s in migration]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute(
        "INSERT INTO runs (run_id, workflow_id, version, status, inputs, attempt, "
        "resolved_versions, created_at) VALUES ('r1', 'wf', '1', 'running', '{}', 1, '{}', 1.0)"
    )
    for node in ("z", "a", "m"):  # completion order, not name order
        db.execute(
            "INSERT INTO node_outputs VALUES ('r1', ?, 1, ?)", (node, json.dumps({"n": node}))
        )
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert list(store.node_outputs("r1")) == ["z", "a", "m"]
        # New outputs of the running run come after the converted ones; a replaced output
        # keeps its place.
        assert store.save_node_output("r1", "b", 1, {"n": "b"})
        assert store.save_node_output("r1", "z", 1, {"n": "z2"})
        store.save_node_output_later("r1", "c", 1, {"n": "c"})
        store.save_node_output_json_later("r1", "d", 1, '{"n":"d"}')
        outputs = store.node_outputs("r1")
        assert list(outputs) == ["z", "a", "m", "b", "c", "d"]
        assert outputs["z"] == {"n": "z2"}
        with store._lock:
            (sql,) = store._db.execute(
                "SELECT sql FROM sqlite_schema WHERE name = 'node_outputs'"
            ).fetchone()
            indexes = store._db.execute(
                "SELECT name FROM sqlite_schema WHERE tbl_name = 'node_outputs' AND type = 'index'"
            ).fetchall()
        assert "WITHOUT ROWID" in sql
        assert indexes == []


@pytest.mark.parametrize("limit", [1, 2, 3, 1000])
def test_a_replica_follower_reads_history_a_single_orchestrator_folded(
    pg_url: str, limit: int
) -> None:
    """A database first used by one orchestrator (folded rows, numbered payloads), then by
    replicas: a follower reads those rows back as the events they hold, each once."""
    single = open_store(pg_url)
    try:
        events = mixed_events()
        first = single.append_events_later(events)
        single.flush()
    finally:
        single.close()
    assert FOLDED in [kind for _, kind, _ in stored_rows(pg_url)]
    replica = open_store(pg_url, replica="replica-a")
    try:
        assert isinstance(replica, PostgresStore)
        got: list[Any] = []
        after = 0
        for _ in range(len(events) + 1):
            page, cursor = replica.events_committed(after, limit)
            assert [r.seq for r, _ in page] == sorted(r.seq for r, _ in page)
            assert not any(mine for _, mine in page)
            got += [record for record, _ in page]
            if cursor == after:
                break
            after = cursor
        assert sorted(as_tuples(got)) == expected(first, events)
    finally:
        replica.close()
