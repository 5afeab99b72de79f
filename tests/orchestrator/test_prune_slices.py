"""A SQLite store's prune in slices inside the writer's commits (``store/prune_slices.py``):
what is deleted stays exact while runs are written beside it, a slice that fails is undone
alone, and a prune never waits on itself or on a closed store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagengine.exceptions import StoreError
from dagengine.orchestrator.store import Store, prune_slices
from dagengine.orchestrator.store.retention import PruneReport, RetentionPolicy
from test_retention import DAY, NOW, add_run, run_ids

POLICY = RetentionPolicy(10 * DAY)


@contextmanager
def old_runs(tmp_path: Path, count: int, *, refusing: str) -> Iterator[Store]:
    """A store with ``count`` runs past the retention, ``old000``..., whose connection
    refuses to delete run ``refusing`` (a statement that fails in a prune's slice)."""
    with Store(tmp_path / "s.db") as store:
        for index in range(count):
            add_run(store, f"old{index:03}", age_days=40)
        store.flush()
        with store._lock:
            store._db.execute(
                "CREATE TEMP TRIGGER refuse BEFORE DELETE ON runs "
                f"WHEN OLD.run_id = '{refusing}' "
                f"BEGIN SELECT RAISE(ABORT, '{refusing} may not go'); END"
            )
        yield store


def prune_all(store: Store, limit: int = 64) -> PruneReport:
    total = PruneReport()
    while True:
        part = store.prune(POLICY, now=NOW, limit=limit)
        total.add(part)
        if part.runs < limit:
            return total


def test_a_prune_beside_running_writes_deletes_exactly_the_old_runs(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        for index in range(200):
            add_run(store, f"old{index:03}", age_days=40, outputs=2, events=3)
        store.flush()
        stop = threading.Event()
        written: list[str] = []

        def write() -> None:  # runs created, run and finished while the prune goes on
            while not stop.is_set() or len(written) < 40:
                run_id = f"new{len(written):03}"
                add_run(store, run_id, age_days=1, outputs=2, events=3)
                written.append(run_id)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            report = prune_all(store)
        finally:
            stop.set()
            writer.join(timeout=60)
        assert (report.runs, report.node_outputs) == (200, 400)
        assert report.events == 200 * 3
        assert run_ids(store) == set(written)
        for run_id in written[:5]:
            assert store.node_outputs(run_id) == {"n0": {"v": 0}, "n1": {"v": 1}}
            assert len(store.events(run_id=run_id)) == 3


def test_a_slice_that_fails_is_undone_alone(tmp_path: Path) -> None:
    with old_runs(tmp_path, 40, refusing="old030") as store:
        with pytest.raises(StoreError, match="old030 may not go"):
            prune_all(store)
        left = run_ids(store)
        assert "old030" in left
        # The slices before it were committed; the failed one left all of its runs whole.
        assert "old000" not in left
        for run_id in left:
            assert len(store.events(run_id=run_id)) == 3
        # The store keeps writing, and the next prune (once allowed) takes the rest.
        add_run(store, "young", age_days=1)
        with store._lock:
            store._db.execute("DROP TRIGGER refuse")
        prune_all(store)
        assert run_ids(store) == {"young"}


def test_a_prune_inside_a_transaction_of_its_own_thread_does_not_wait_for_itself(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "s.db") as store:
        for index in range(10):
            add_run(store, f"old{index:03}", age_days=40)
        store.flush()
        outcome: list[int] = []

        def prune_in_transaction() -> None:
            with store.transaction():
                outcome.append(store.prune(POLICY, now=NOW).runs)

        thread = threading.Thread(target=prune_in_transaction, daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert outcome == [10]
        assert run_ids(store) == set()


def test_closing_the_store_ends_a_prune_that_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s.db")
    for index in range(10):
        add_run(store, f"old{index:03}", age_days=40)
    store.flush()
    # No slice ever comes due.
    monkeypatch.setattr(prune_slices, "pace", lambda duty: (prune_slices.SLICE_TIME, 1e6))
    errors: list[BaseException] = []

    def prune() -> None:
        try:
            store.prune(POLICY, now=NOW)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=prune, daemon=True)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive()  # waiting for the writer
    store.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], StoreError)
    assert "closed" in str(errors[0])


def test_a_slice_that_fails_in_a_group_commit_leaves_the_group_committed(tmp_path: Path) -> None:
    with old_runs(tmp_path, 4, refusing="old002") as store:
        job = prune_slices.PruneJob(POLICY, NOW, {f"old{index:03}": (2, 3) for index in range(4)})
        with store._pending_cv:  # (the writer is not told: the event below wakes it)
            store._prune_job = job
        store.append_event_later(NOW, "run.queued", workflow_id="wf", run_id="old000", data={})
        assert job.done.wait(timeout=30)
        assert "old002 may not go" in str(job.error)
        assert run_ids(store) == {f"old{index:03}" for index in range(4)}  # (the slice: undone)
        events = store.events(run_id="old000")
        assert [event.type for event in events][-1] == "run.queued"  # (its group: committed)
