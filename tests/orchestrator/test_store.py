"""The stores: records, fencing by attempt, events, trigger state, persistence across
close/reopen and processes, concurrency and migrations, each against both backends (the
``store_target`` fixture: a SQLite file in tmp_path, a schema of a real PostgreSQL, see
tests/pg.py); then what is particular to each (SQLite's WAL and checkpoints, PostgreSQL's
connections)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagengine.exceptions import RunNotFound, StoreError
from dagengine.orchestrator.store import (
    MIGRATIONS,
    PG_MIGRATIONS,
    PostgresStore,
    RunRecord,
    Store,
    open_store,
)
from dagengine.orchestrator.store import sqlite as sqlite_module
from dagengine.orchestrator.store import writer as writer_module
from pg import committed as committed_count
from processes import wait_for

AnyStore = Store | PostgresStore


@pytest.fixture
def store(store_target: str) -> Iterator[AnyStore]:
    with open_store(store_target) as opened:
        yield opened


def _is_pg(target: str | AnyStore) -> bool:
    return isinstance(target, PostgresStore) or str(target).startswith("postgresql://")


def _execute(store: AnyStore, sql: str) -> None:
    """Run a statement of the test's own on the store's connection (in a transaction)."""
    with store.transaction():
        store._db.execute(sql)


def _run(run_id: str, created_at: float = 1000.0, **kw: object) -> RunRecord:
    return RunRecord(run_id, "wf", "1.0.0", created_at=created_at, **kw)  # type: ignore[arg-type]


# --- opening ----------------------------------------------------------------------------------


def test_file_store_is_wal_with_pragmas(tmp_path: Path) -> None:
    store = Store(tmp_path / "sub" / "dir" / "state.db")  # parent directories are created
    assert (tmp_path / "sub" / "dir" / "state.db-wal").exists()
    assert store.journal_mode == "wal"
    assert store.schema_version == len(MIGRATIONS)
    pragmas = {
        name: store._query(f"PRAGMA {name}")[0][0]
        for name in ("synchronous", "foreign_keys", "busy_timeout", "wal_autocheckpoint")
    }
    assert pragmas["synchronous"] == 1  # NORMAL
    assert pragmas["wal_autocheckpoint"] == 0  # the store's own thread checkpoints
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] > 0
    store.close()


def test_the_log_is_checkpointed_and_stays_bounded_under_steady_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 8)
    monkeypatch.setattr(writer_module, "CHECKPOINT_CATCH_UP_FRAMES", 200)
    path = tmp_path / "state.db"
    wal = tmp_path / "state.db-wal"
    with Store(path) as store:
        first = path.stat().st_size
        largest = 0
        for i in range(2000):  # back to back: ~4 KiB of inputs (a page or more) each
            store.create_run(_run(f"r{i}", inputs={"blob": "x" * 4000}))
            largest = max(largest, wal.stat().st_size)
        # The checkpointer copied the log into the database file...
        wait_for(lambda: path.stat().st_size >= first + (4 << 20), "the log's checkpoint")
        # ... and the log started over instead of growing with every commit: without the
        # writer's catch-up it never does, and ends at ~74 MiB (every commit's frames). With
        # it, a few MiB on a quiet machine; how far it gets first depends on when the
        # checkpointer thread gets a CPU, and on a machine busy with other work that was up
        # to ~49 MiB, once over 56 (a 16 MiB bound failed there now and then, on the old
        # code too). A restarted log keeps its file size, so the size is what shows it.
        assert largest < 66 << 20, f"the log grew to {largest} bytes"


def test_a_run_end_wakes_the_writer_while_the_checkpointer_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpointer once waited on the writer's condition: the wake-up of a run's end
    # could go to it, and the run's end then waited for the lazy timer (a run in a hundred
    # took 20 ms at 1,000 runs/s). This checks run ends are committed at once while the
    # checkpointer is busy and idle; it did not catch that race reliably.
    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 1)
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 60.0)
    with Store(tmp_path / "state.db") as store:
        for i in range(20):
            store.create_run(_run(f"r{i}", status="running", attempt=1))  # a checkpoint each
            # The checkpointer took this commit's request: it is checkpointing or back to
            # waiting, the two states a run's end must not wait behind.
            wait_for(lambda: not store._checkpoint_wanted, "the checkpointer to take its request")
            told = threading.Event()
            store.finish_run_later(
                f"r{i}", 1, "succeeded", "{}", None, lambda _, told=told: told.set()
            )
            assert told.wait(5), f"run end {i} was not committed"


def test_a_group_that_fails_to_commit_is_tried_again_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "state.db"
    with Store(path) as store:
        other = sqlite3.connect(path, isolation_level=None)  # another process, in effect
        other.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        told: list[bool] = []
        ended = threading.Event()
        store.create_run_later(_run("r", status="running", attempt=1))
        store.finish_run_later(
            "r", 1, "succeeded", "{}", None, lambda stored: (told.append(stored), ended.set())
        )
        wait_for(lambda: store.write_error is not None, "the writer's first try to fail")
        assert not ended.is_set()
        other.execute("COMMIT")
        other.close()
        assert ended.wait(5)
        assert told == [True]
        rec = store.get_run("r")
        assert rec is not None
        assert rec.status == "succeeded"


def test_a_failure_after_the_commit_does_not_lose_the_run_ends_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "state.db") as store:

        def checkpointing_fails() -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(store, "_committed", checkpointing_fails)
        ended = threading.Event()
        store.create_run_later(_run("r", status="running", attempt=1))
        store.finish_run_later("r", 1, "succeeded", "{}", None, lambda _: ended.set())
        assert ended.wait(5)


def test_without_its_checkpointer_the_store_falls_back_to_sqlites_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "state.db") as store:
        assert store._query("PRAGMA wal_autocheckpoint")[0][0] == 0
        monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 1)

        def no_more_files(*args: object, **kwargs: object) -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr(sqlite3, "connect", no_more_files)
        store.create_run(_run("r"))  # a commit: the checkpointer starts, and cannot open
        wait_for(
            lambda: store._query("PRAGMA wal_autocheckpoint")[0][0] == 1000,
            "SQLite's automatic checkpoints to come back",
        )


def test_closing_starts_no_checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "state.db")
    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 1)
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 60.0)
    store.append_event_later(None, "run.queued", run_id="r")  # committed by close()
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "dagengine-store-checkpoint"]


def test_memory_store_works() -> None:
    with Store(":memory:") as store:
        store.create_run(_run("r"))
        assert store.get_run("r") is not None
        assert store.journal_mode == "memory"


def test_migrations_are_idempotent(store_target: str) -> None:
    open_store(store_target).close()
    known = len(PG_MIGRATIONS if _is_pg(store_target) else MIGRATIONS)
    listing = (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        if _is_pg(store_target)
        else "SELECT name FROM sqlite_master"
    )
    for _ in range(3):
        with open_store(store_target) as store:
            assert store.schema_version == known
            tables = {row[0] for row in store._query(listing)}
            assert {"runs", "events", "node_outputs", "workflow_versions"} <= tables


def test_newer_schema_is_refused(store_target: str) -> None:
    with open_store(store_target) as store:
        if isinstance(store, PostgresStore):
            _execute(store, f"UPDATE dagengine_schema SET version = {len(PG_MIGRATIONS) + 1}")
    if not _is_pg(store_target):
        db = sqlite3.connect(store_target)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        db.close()
    with pytest.raises(StoreError, match="newer than this dagengine understands"):
        open_store(store_target)


def test_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store(path)


# --- runs -------------------------------------------------------------------------------------


def test_run_round_trip(store: AnyStore) -> None:
    record = RunRecord(
        "r1",
        "wf",
        "1.2.0",
        inputs={"x": [1, 2, {"y": None}]},
        key="k",
        depth=0,
        resolved_versions={"child@^1": "1.4.0"},
        created_at=5.0,
    )
    store.create_run(record)
    assert store.get_run("r1") == record
    assert store.get_run("nope") is None
    with pytest.raises(StoreError, match="r1"):
        store.create_run(record)


def test_child_runs_reference_their_parent(store: AnyStore) -> None:
    store.create_run(_run("parent"))
    store.create_run(_run("child", parent_run_id="parent", parent_node_id="n", depth=1))
    assert [r.run_id for r in store.list_runs(parent_run_id="parent")] == ["child"]
    with pytest.raises(StoreError):  # foreign keys are on
        store.create_run(_run("orphan", parent_run_id="ghost"))


def test_update_run(store: AnyStore) -> None:
    store.create_run(_run("r"))
    store.update_run("r", resolved_versions={"c": "2.0.0"}, key="other")
    rec = store.get_run("r")
    assert rec is not None
    assert rec.resolved_versions == {"c": "2.0.0"}
    assert rec.key == "other"
    with pytest.raises(ValueError, match="bogus"):
        store.update_run("r", bogus=1)
    with pytest.raises(ValueError, match="invalid run status"):
        store.update_run("r", status="exploded")
    with pytest.raises(RunNotFound):
        store.update_run("ghost", key="x")


def test_list_runs_filters_and_order(store: AnyStore) -> None:
    for i in range(5):
        store.create_run(_run(f"r{i}", created_at=100.0 + i))
    store.create_run(RunRecord("other", "wf2", "1.0.0", created_at=100.0))
    store.claim_attempt("r1", "e")
    assert [r.run_id for r in store.list_runs(workflow_id="wf")] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.run_id for r in store.list_runs(status="running")] == ["r1"]
    assert [r.run_id for r in store.list_runs(workflow_id="wf", limit=2, offset=1)] == ["r3", "r2"]
    assert len(store.list_runs()) == 6
    # Same created_at: later insertion counts as newer.
    assert [r.run_id for r in store.list_runs(limit=6)][-2:] == ["other", "r0"]
    assert [r.run_id for r in store.unfinished_runs()] == ["r0", "other", "r1", "r2", "r3", "r4"]
    store.finish_run("r0", 0, "cancelled")
    assert "r0" not in [r.run_id for r in store.unfinished_runs()]


def test_claim_attempt(store: AnyStore) -> None:
    store.create_run(_run("r"))
    assert store.claim_attempt("r", "e1") == 1
    first = store.get_run("r")
    assert first is not None
    assert (first.status, first.engine_id, first.attempt) == ("running", "e1", 1)
    assert first.started_at is not None
    assert store.claim_attempt("r", "e2") == 2
    second = store.get_run("r")
    assert second is not None
    assert (second.engine_id, second.started_at) == ("e2", first.started_at)
    assert store.finish_run("r", 2, "succeeded", {"out": 1})
    with pytest.raises(StoreError, match="already succeeded"):
        store.claim_attempt("r", "e3")
    with pytest.raises(RunNotFound):
        store.claim_attempt("ghost", "e3")


def test_runs_and_claims_queued_for_the_group_commit(store_target: str) -> None:
    with open_store(store_target) as store:
        store.create_run_later(_run("r"))
        store.claim_attempt_later("r", "e1", 1)
        store.save_node_output_json_later("r", "a", 1, '{"v":1}')
        store.claim_attempt_later("r", "e2", 2)  # e1 presumed dead
        store.save_node_output_json_later("r", "b", 1, '{"late":true}')  # fenced out
        store.claim_attempt_later("r", "e0", 1)  # never back to an older attempt
        # Readers commit what is pending first, in the order it was queued.
        rec = store.get_run("r")
        assert rec is not None
        assert (rec.status, rec.engine_id, rec.attempt) == ("running", "e2", 2)
        assert store.node_outputs("r") == {"a": {"v": 1}}
        done: list[bool] = []
        told = threading.Event()
        store.finish_run_later(
            "r",
            2,
            "succeeded",
            '{"outputs":{"a":{"v":1}}}',
            None,
            lambda stored: (done.append(stored), told.set()),
        )
        store.claim_attempt_later("r", "e3", 3)  # finished: no claim takes it back
        store.flush()
        assert told.wait(5)
        assert done == [True]
        rec = store.get_run("r")
        assert rec is not None
        assert (rec.status, rec.attempt, rec.result) == (
            "succeeded",
            2,
            {"outputs": {"a": {"v": 1}}},
        )
        # A taken id queued again changes nothing and does not fail the group.
        store.create_run_later(_run("r", created_at=5.0))
        store.create_run_later(_run("s"))
        assert [r.run_id for r in store.list_runs()] == ["s", "r"]
        with pytest.raises(StoreError, match="cannot create run"):
            store.create_run(_run("s"))
    # Everything queued reached the database.
    with open_store(store_target) as reopened:
        rec = reopened.get_run("r")
        assert rec is not None
        assert rec.status == "succeeded"


def test_run_end_commits_at_once_with_the_writes_it_is_fenced_on(
    store_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 60.0)
    path = store_target
    with open_store(path) as store:
        store.create_run_later(_run("r", status="running", attempt=1))
        store.save_node_output_json_later("r", "a", 1, '{"v":1}')
        store.append_event_later(None, "node.succeeded", run_id="r", node_id="a")
        # Nobody waits for these: they wait for company (up to the delay, 60 s here).
        time.sleep(0.3)
        assert committed_count(path, "SELECT COUNT(*) FROM runs") == 0
        # A run's end is waited for: committed now, with every write its rows are fenced on
        # (its creation, its outputs). Events are not fenced on anything: they keep waiting.
        ended = threading.Event()
        store.finish_run_later("r", 1, "succeeded", "{}", None, lambda stored: ended.set())
        assert ended.wait(5)
        assert committed_count(path, "SELECT COUNT(*) FROM runs WHERE status = 'succeeded'") == 1
        assert committed_count(path, "SELECT COUNT(*) FROM node_outputs") == 1
        assert committed_count(path, "SELECT COUNT(*) FROM events") == 0
        # A reader of this store commits them first.
        assert [e.type for e in store.events()] == ["node.succeeded"]
        assert committed_count(path, "SELECT COUNT(*) FROM events") == 1


def test_events_are_committed_when_due_while_run_ends_keep_coming(
    store_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 0.2)
    path = store_target
    with open_store(path) as store:
        queued = time.monotonic()
        store.append_event_later(None, "run.queued", run_id="r0")
        ends: list[int] = []
        committed: list[int] = []
        stopped = threading.Event()

        def next_end(_stored: bool = True) -> None:
            # Each run end's callback queues the next one: the writer always finds a run end
            # waiting when it looks.
            if time.monotonic() - queued > 1:
                # (Counted here, before the writer is idle and commits the event anyway.)
                committed.append(committed_count(path, "SELECT COUNT(*) FROM events"))
                stopped.set()
                return
            ends.append(len(ends) + 1)
            store.create_run_later(_run(f"r{len(ends)}", status="running", attempt=1))
            store.finish_run_later(f"r{len(ends)}", 1, "succeeded", "{}", None, next_end)

        next_end()
        assert stopped.wait(10)
        assert len(ends) > 10
        assert committed == [1]


def test_run_end_callbacks_run_on_the_writer_not_on_a_thread_that_commits(
    store_target: str,
) -> None:
    # A thread that holds a lock of its own while it writes (the event bus does) and commits
    # the group (backpressure, or a reader) must not run a run end's callback: the callback
    # takes locks too (the orchestrator's, the bus's), and running it there deadlocked.
    with open_store(store_target) as store:
        store.create_run_later(_run("r", status="running", attempt=1))
        threads: list[str] = []
        told = threading.Event()
        with store._lock:  # the writer cannot commit meanwhile: this thread will
            store.finish_run_later(
                "r",
                1,
                "succeeded",
                "{}",
                None,
                lambda stored: (threads.append(threading.current_thread().name), told.set()),
            )
            store.flush()
            assert store.get_run("r").status == "succeeded"  # type: ignore[union-attr]
        assert told.wait(5)
        assert threads == ["dagengine-store-writer"]


def test_writes_nobody_waits_for_are_committed_after_the_delay(
    store_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 0.2)
    path = store_target
    with open_store(path) as store:
        queued = time.monotonic()
        store.append_event_later(None, "run.queued", run_id="r")
        wait_for(lambda: committed_count(path, "SELECT COUNT(*) FROM events") > 0, "the commit")
        assert time.monotonic() - queued >= 0.15  # it waited for company


def test_outputs_queued_together_are_each_fenced_on_their_own_run(store: AnyStore) -> None:
    store.create_run(_run("a", status="running", attempt=2))
    store.create_run(_run("b", status="running", attempt=1))
    store.create_run(_run("c", status="succeeded", attempt=1))
    # One group, one statement: each row is checked against its own run.
    store.save_node_output_json_later("a", "x", 2, '{"v":1}')
    store.save_node_output_json_later("a", "y", 1, '{"stale":true}')  # an older attempt
    store.save_node_output_json_later("b", "x", 1, '{"v":2}')
    store.save_node_output_json_later("c", "x", 1, '{"late":true}')  # run already ended
    store.save_node_output_json_later("b", "x", 1, '{"v":3}')  # again: the later one wins
    store.save_node_output_json_later("b", "x", 0, '{"stale":true}')  # ... if it is fenced in
    assert store.node_outputs("a") == {"x": {"v": 1}}
    assert store.node_outputs("b") == {"x": {"v": 3}}
    assert store.node_outputs("c") == {}


def test_run_ends_queued_together_are_each_fenced_and_told_in_order(store: AnyStore) -> None:
    store.create_run(_run("a", status="running", attempt=2))
    store.create_run(_run("b", status="running", attempt=1))
    store.create_run(_run("c", status="succeeded", attempt=1))
    store.create_run(_run("d"))  # queued
    told: list[tuple[str, bool]] = []
    all_told = threading.Event()

    def finish(run_id: str, attempt: int | None, status: str = "succeeded") -> None:
        def done(stored: bool) -> None:
            told.append((run_id, stored))
            if len(told) == 7:
                all_told.set()

        store.finish_run_later(run_id, attempt, status, f'{{"by":"{run_id}{attempt}"}}', None, done)

    with store._lock:  # the writer cannot commit meanwhile: one group
        store.create_run_later(_run("e", status="running", attempt=1))
        finish("a", 1)  # an older attempt: refused (and "a" has another end queued)
        finish("b", 1)
        finish("c", 1)  # already ended
        finish("d", None, "cancelled")  # whatever the attempt
        finish("ghost", 1)
        finish("e", 1)  # created in the same group
        finish("a", 2)
        store.flush()
    assert all_told.wait(5)
    assert told == [
        ("a", False),
        ("b", True),
        ("c", False),
        ("d", True),
        ("ghost", False),
        ("e", True),
        ("a", True),
    ]
    ended = {r.run_id: (r.status, r.result) for r in store.list_runs()}
    assert ended == {
        "a": ("succeeded", {"by": "a2"}),
        "b": ("succeeded", {"by": "b1"}),
        "c": ("succeeded", None),
        "d": ("cancelled", {"by": "dNone"}),
        "e": ("succeeded", {"by": "e1"}),
    }


def test_a_group_of_many_runs_is_a_few_statements(tmp_path: Path) -> None:
    # Each statement lets go of the GIL: per-run statements cost the orchestrator a
    # context switch each under load (see Store._commit_group). (SQLite only.)
    store = Store(tmp_path / "state.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    ended = threading.Semaphore(0)
    with store._lock:
        for i in range(50):
            run_id = f"r{i:02}"
            store.create_run_later(_run(run_id, status="running", attempt=1))
            store.save_node_output_json_later(run_id, "a", 1, '{"v":1}')
            store.append_event_later(None, "node.succeeded", run_id=run_id, node_id="a")
            store.finish_run_later(run_id, 1, "succeeded", "{}", None, lambda _: ended.release())
        store.flush()
    store._db.set_trace_callback(None)
    for _ in range(50):
        assert ended.acquire(timeout=5)
    # BEGIN, the runs, their outputs, which ends are recorded, the ends, the events, COMMIT.
    assert len(statements) == 7, statements
    assert len(store.list_runs(status="succeeded", limit=100)) == 50
    assert len(store.events(limit=100)) == 50
    assert store.node_outputs("r49") == {"a": {"v": 1}}
    store.close()


def test_node_outputs_are_fenced_by_attempt(store: AnyStore) -> None:
    store.create_run(_run("r"))
    assert not store.save_node_output("r", "a", 0, {"v": 0})  # queued: nothing runs yet
    assert store.claim_attempt("r", "e1") == 1
    assert store.save_node_output("r", "a", 1, {"v": 1})
    assert store.claim_attempt("r", "e2") == 2  # e1 presumed dead
    assert not store.save_node_output("r", "b", 1, {"late": True})  # e1's late output
    assert store.save_node_output("r", "b", 2, {"v": 2})
    assert store.node_outputs("r") == {"a": {"v": 1}, "b": {"v": 2}}
    assert not store.save_node_output("ghost", "a", 1, {})


def test_finish_run_is_fenced(store: AnyStore) -> None:
    store.create_run(_run("r"))
    store.claim_attempt("r", "e1")
    store.claim_attempt("r", "e2")
    assert not store.finish_run("r", 1, "failed", None, {"message": "stale"})
    rec = store.get_run("r")
    assert rec is not None
    assert (rec.status, rec.error, rec.finished_at) == ("running", None, None)
    assert store.finish_run("r", 2, "succeeded", {"outputs": {"a": 1}})
    assert not store.finish_run("r", 2, "failed", None, {"message": "twice"})
    done = store.get_run("r")
    assert done is not None
    assert done.status == "succeeded"
    assert done.result == {"outputs": {"a": 1}}
    assert done.finished
    assert done.finished_at is not None
    with pytest.raises(ValueError, match="invalid run status"):
        store.finish_run("r", 2, "running")


def test_cancel_whatever_the_attempt_and_release(store: AnyStore) -> None:
    store.create_run(_run("q"))
    assert store.finish_run("q", None, "cancelled")  # never dispatched
    store.create_run(_run("r"))
    store.claim_attempt("r", "e1")
    assert not store.release_run("r", 0)
    assert store.release_run("r", 1)
    rec = store.get_run("r")
    assert rec is not None
    assert (rec.status, rec.engine_id, rec.attempt) == ("queued", None, 1)
    assert not store.save_node_output("r", "a", 1, {})  # released: the old attempt is over
    assert store.claim_attempt("r", "e2") == 2


# --- workflows, events, triggers ---------------------------------------------------------------


def test_workflow_versions_in_registration_order(store: AnyStore) -> None:
    store.save_workflow_version("b", "1.0.0", {"id": "b"}, None, [])
    store.save_workflow_version("a", "2.0.0", None, {"team": "x"}, [("b", "^1")])
    store.save_workflow_version("b", "1.0.0", {"id": "b", "v": 2}, {"m": 1}, [])  # replaces
    records = store.workflow_versions()
    assert [(r.workflow_id, r.version) for r in records] == [("b", "1.0.0"), ("a", "2.0.0")]
    assert records[0].spec == {"id": "b", "v": 2}
    assert records[0].metadata == {"m": 1}
    assert records[1].spec is None
    assert records[1].dependencies == (("b", "^1"),)


def test_events_filters_and_monotonic_seq(store_target: str) -> None:
    path = store_target
    with open_store(path) as store:
        seqs = [
            store.append_event(1.0, "run.queued", "info", "wf", "r1"),
            store.append_event(2.0, "node.failed", "error", "wf", "r1", "n", "e1", {"x": 1}),
            store.append_event(None, "engine.unhealthy", "warning", engine_id="e1"),
            store.append_event(4.0, "run.failed", "critical", "wf2", "r2"),
        ]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 4
        assert [e.seq for e in store.events()] == seqs
        assert [e.seq for e in store.events(after=seqs[1])] == seqs[2:]
        assert [e.type for e in store.events(run_id="r1")] == ["run.queued", "node.failed"]
        assert [e.run_id for e in store.events(workflow_id="wf2")] == ["r2"]
        assert [e.type for e in store.events(types=["run.failed", "run.queued"])] == [
            "run.queued",
            "run.failed",
        ]
        assert store.events(types=[]) == []
        assert [e.severity for e in store.events(min_severity="warning")] == [
            "error",
            "warning",
            "critical",
        ]
        assert [e.seq for e in store.events(limit=2)] == seqs[:2]
        failed = store.events(types=["node.failed"])[0]
        assert (failed.node_id, failed.engine_id, failed.data, failed.time) == (
            "n",
            "e1",
            {"x": 1},
            2.0,
        )
        with pytest.raises(ValueError, match="invalid severity"):
            store.append_event(None, "x", "fatal")
        with pytest.raises(ValueError, match="invalid severity"):
            store.events(min_severity="loud")
        assert store.last_event_seq() == seqs[-1]
    # Sequence numbers survive a restart and are never reused, even for the newest event
    # being gone.
    with open_store(path) as store:
        _execute(store, f"DELETE FROM events WHERE seq = {seqs[-1]}")
        assert store.append_event(None, "run.queued") == seqs[-1] + 1
    if _is_pg(path):  # ... also across a restart (the events_seq high-water mark)
        with open_store(path) as store:
            _execute(store, f"DELETE FROM events WHERE seq = {seqs[-1] + 1}")
        with open_store(path) as store:
            assert store.append_event(None, "run.queued") == seqs[-1] + 2


def test_trigger_state(store: AnyStore) -> None:
    assert store.get_trigger_state("cron-1") is None
    store.set_trigger_state("cron-1", {"last_fire": "2024-01-01T00:00:00Z"})
    store.set_trigger_state("cron-1", {"last_fire": "2024-01-02T00:00:00Z", "n": 2})
    assert store.get_trigger_state("cron-1") == {"last_fire": "2024-01-02T00:00:00Z", "n": 2}


def test_transaction_is_atomic(store: AnyStore) -> None:
    def fail_half_way() -> None:
        with store.transaction():
            store.create_run(_run("a"))
            store.append_event(None, "run.queued", run_id="a")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert store.get_run("a") is None
    assert store.events() == []
    with store.transaction():
        store.create_run(_run("a"))
        with store.transaction():  # nested: committed with the outer one
            store.claim_attempt("a", "e")
    rec = store.get_run("a")
    assert rec is not None
    assert rec.attempt == 1


# --- persistence and concurrency ---------------------------------------------------------------


def _fill(store: AnyStore) -> None:
    store.save_workflow_version("wf", "1.0.0", {"id": "wf"}, {"owner": "me"}, [])
    store.create_run(_run("done", inputs={"n": 1}))
    store.claim_attempt("done", "e1")
    store.save_node_output("done", "a", 1, {"value": 42})
    store.finish_run("done", 1, "succeeded", {"outputs": {"a": {"value": 42}}})
    store.create_run(_run("pending", created_at=2000.0))
    store.append_event(None, "run.completed", run_id="done")
    store.set_trigger_state("t", {"k": "v"})


def test_persistence_across_close_and_reopen(store_target: str) -> None:
    path = store_target
    with open_store(path) as store:
        _fill(store)
    with open_store(path) as store:
        done = store.get_run("done")
        assert done is not None
        assert done.status == "succeeded"
        assert store.node_outputs("done") == {"a": {"value": 42}}
        assert [r.run_id for r in store.unfinished_runs()] == ["pending"]
        assert store.workflow_versions()[0].metadata == {"owner": "me"}
        assert store.get_trigger_state("t") == {"k": "v"}
        assert [e.type for e in store.events()] == ["run.completed"]


_READER = """
import json, sys
from dagengine.orchestrator.store import open_store
store = open_store(sys.argv[1])
done = store.get_run("done")
print(json.dumps({
    "status": done.status,
    "outputs": store.node_outputs("done"),
    "unfinished": [r.run_id for r in store.unfinished_runs()],
    "events": [e.type for e in store.events()],
    "trigger": store.get_trigger_state("t"),
}))
store.append_event(None, "from.child")
store.close()
"""


def test_another_process_reads_what_we_wrote(store_target: str) -> None:
    store = open_store(store_target)
    _fill(store)  # committed, store still open: the reader sees it (SQLite: through the WAL)
    out = subprocess.run(
        [sys.executable, "-c", _READER, store_target],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(out.stdout)
    assert seen == {
        "status": "succeeded",
        "outputs": {"a": {"value": 42}},
        "unfinished": ["pending"],
        "events": ["run.completed"],
        "trigger": {"k": "v"},
    }
    # ... and we see what it wrote, with the next sequence number.
    assert [e.type for e in store.events()] == ["run.completed", "from.child"]
    store.close()


def test_concurrent_writers_from_threads(store: AnyStore) -> None:
    threads, per_thread = 8, 50
    for t in range(threads):
        store.create_run(_run(f"r{t}"))
        store.claim_attempt(f"r{t}", "e")
    errors: list[BaseException] = []
    seqs: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                seq = store.append_event(None, "node.succeeded", run_id=f"r{t}", data={"i": i})
                assert store.save_node_output(f"r{t}", f"n{i}", 1, {"i": i})
                with lock:
                    seqs.append(seq)
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(set(seqs)) == threads * per_thread
    for t in range(threads):
        assert len(store.node_outputs(f"r{t}")) == per_thread


def test_claims_race_to_distinct_attempts(store: AnyStore) -> None:
    store.create_run(_run("r"))
    got: list[int] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        attempt = store.claim_attempt("r", f"e{i}")
        with lock:
            got.append(attempt)

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(10)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(got) == list(range(1, 11))


# --- a row that cannot be written -------------------------------------------------------------


def test_a_row_that_cannot_be_encoded_does_not_poison_the_writer(store: AnyStore) -> None:
    # A lone surrogate cannot be encoded as UTF-8: binding it failed the whole group commit,
    # the group went back to the queue, and every later write and read failed behind it.
    store.create_run_later(_run("good-1"))
    store.create_run_later(_run("bad", inputs={"a": "\udcff", "k\udcfe": 1}))
    store.append_event_later(None, "run.queued", run_id="bad", data={"why": "\udcff"})
    store.create_run_later(_run("good-2"))
    store.flush()
    assert store.write_error is None
    assert store.get_run("good-1") is not None
    assert store.get_run("good-2") is not None
    # The row is written with its JSON escaped: it reads back unchanged.
    bad = store.get_run("bad")
    assert bad is not None
    assert bad.inputs == {"a": "\udcff", "k\udcfe": 1}
    assert [e.data for e in store.events(run_id="bad")] == [{"why": "\udcff"}]
    assert store.dropped_writes == 0
    store.create_run(_run("after"))  # the writer goes on
    assert store.get_run("after") is not None


def test_a_row_that_cannot_be_written_at_all_is_dropped_alone(store: AnyStore) -> None:
    # An integer SQLite cannot hold (beyond 64 bits): that row alone is dropped, its run end
    # reports "not recorded", everything queued around it is written.
    told: list[tuple[str, bool]] = []
    store.create_run_later(_run("r1"))
    store.create_run_later(_run("r2"))
    store.create_run_later(_run("huge", depth=2**70))
    store.flush()
    store.finish_run_later("r1", 0, "succeeded", {}, None, lambda ok: told.append(("r1", ok)))
    store.claim_attempt_later("r2", "e1", 2**80)
    store.finish_run_later("r2", 0, "failed", {}, None, lambda ok: told.append(("r2", ok)))
    store.flush()
    wait_for(lambda: len(told) >= 2, "both run ends")
    assert sorted(told) == [("r1", True), ("r2", True)]
    assert store.get_run("huge") is None
    assert store.dropped_writes == 2  # the huge run and the huge claim
    r1 = store.get_run("r1")
    assert r1 is not None
    assert r1.status == "succeeded"
    assert store.write_error is None


def test_write_error_says_when_the_store_cannot_write(store: AnyStore) -> None:
    store.create_run(_run("before"))
    pg = isinstance(store, PostgresStore)
    with store._lock:  # every write now fails (not the data)
        if pg:
            store._db.execute("SET default_transaction_read_only = on")
        else:
            store._db.execute("PRAGMA query_only = ON")
    store.create_run_later(_run("waiting"))
    with pytest.raises(Exception, match=r"read-?only") as raised:
        store.flush()
    assert not isinstance(raised.value, ValueError)  # not taken for a row's bad data
    assert store.write_error is not None
    assert re.search("read-?only", store.write_error)
    with store._lock:
        if pg:
            store._db.execute("SET default_transaction_read_only = off")
        else:
            store._db.execute("PRAGMA query_only = OFF")
    store.flush()  # the group was kept: written now
    assert store.write_error is None
    assert store.get_run("waiting") is not None


# --- PostgreSQL: connections, errors, concurrent starts ------------------------------------------


def test_postgres_writer_connects_again_after_losing_its_connection(pg_url: str) -> None:
    import psycopg

    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        store.create_run(_run("r", status="running", attempt=1))
        pid = store._db.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits for it
        told: list[bool] = []
        ended = threading.Event()
        store.finish_run_later(
            "r", 1, "succeeded", "{}", None, lambda ok: (told.append(ok), ended.set())
        )
        assert ended.wait(30)
        assert told == [True]
        assert store._db.info.backend_pid != pid
        assert store.write_error is None
        rec = store.get_run("r")
        assert rec is not None
        assert rec.status == "succeeded"
        # Readers whose pooled connections were killed try again on new ones.
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = '' AND pid <> pg_backend_pid() AND pid <> %s "
                "AND datname = current_database() AND backend_type = 'client backend' "
                "AND pid IN (SELECT pid FROM pg_stat_activity WHERE state = 'idle')",
                (store._db.info.backend_pid,),
            )
        assert store.get_run("r") is not None


def test_postgres_server_that_cannot_be_reached_is_a_store_error() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError, match=r"cannot open store postgresql://u:\*\*\*@127"):
        open_store(f"postgresql://u:secret@127.0.0.1:{port}/db")


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagengine.exceptions import ConfigError

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"pip install 'dagengine\[postgres\]'"):
        open_store("postgresql://u@127.0.0.1:1/db")


def test_postgres_stores_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    stores: list[AnyStore] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def open_one() -> None:
        try:
            opened = open_store(pg_url)
        except BaseException as exc:  # reported below
            errors.append(exc)
            return
        with lock:
            stores.append(opened)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [s.schema_version for s in stores] == [len(PG_MIGRATIONS)] * 4
    for opened in stores:
        opened.close()


def test_postgres_url_password_is_not_shown(pg_url: str) -> None:
    from dagengine.orchestrator.store.postgres import redact

    assert redact("postgresql://me:hunter2@db:5432/x?sslmode=require") == (
        "postgresql://me:***@db:5432/x?sslmode=require"
    )
    with open_store(pg_url) as store:
        assert "hunter2" not in repr(store)


def test_a_closed_postgres_store_refuses_writes(pg_url: str) -> None:
    store = open_store(pg_url)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.create_run_later(_run("r"))
    with pytest.raises(StoreError, match="closed"):
        store.set_trigger_state("t", {})
