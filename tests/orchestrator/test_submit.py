"""Runs acknowledged from an event loop (:mod:`dagengine.orchestrator.submit`) and the store's
fence behind them (``when_committed``): told once the writes queued before it are committed,
told of a failed commit, on both stores (``store_target``)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from dagengine import DAG, LuaExecutor, Node, PythonExecutor
from dagengine.exceptions import StoreError, WorkflowNotFound
from dagengine.orchestrator import Orchestrator, RunHandle
from dagengine.orchestrator.store import RunRecord, open_store
from dagengine.orchestrator.store import sqlite as sqlite_module
from dagengine.orchestrator.store import writer as writer_module
from dagengine.orchestrator.submit import committed, submit
from pg import committed as committed_count


def _run(run_id: str) -> RunRecord:
    return RunRecord(run_id, "wf", "1.0.0", created_at=1000.0)


def test_a_fence_is_told_once_the_writes_queued_before_it_are_committed(
    store_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 60.0)  # nothing commits by itself
    with open_store(store_target) as store:
        store.create_run_later(_run("r"))
        store.append_event_later(None, "run.queued", run_id="r")
        told: list[bool] = []
        fenced = threading.Event()
        store.when_committed(lambda ok: (told.append(ok), fenced.set()))
        assert fenced.wait(10)
        assert told == [True]
        assert committed_count(store_target, "SELECT COUNT(*) FROM runs") == 1
        # Events are not fenced on (as for a run's end): they keep waiting for company.
        assert committed_count(store_target, "SELECT COUNT(*) FROM events") == 0


def test_a_fence_is_told_of_a_failed_commit_and_its_writes_stay_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "state.db"
    with open_store(str(path)) as store:
        other = sqlite3.connect(path, isolation_level=None)  # another process, in effect
        other.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        told: list[bool] = []
        fenced = threading.Event()
        store.create_run_later(_run("r"))
        store.when_committed(lambda ok: (told.append(ok), fenced.set()))
        assert fenced.wait(10)
        assert told == [False]
        other.execute("COMMIT")
        other.close()
        again = threading.Event()
        store.when_committed(lambda ok: (told.append(ok), again.set()))
        assert again.wait(10)
        assert told == [False, True]
        assert committed_count(str(path), "SELECT COUNT(*) FROM runs") == 1


def _lua_dag() -> DAG:
    dag = DAG()
    dag.add_node(Node("a", [], LuaExecutor("return {x = (inputs.n or 1) * 2}")))
    return dag


def test_submit_returns_with_the_run_committed_and_its_end_to_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 60.0)
    path = str(tmp_path / "state.db")
    with Orchestrator(store=path) as orch:
        orch.register_workflow("lua1", "1.0.0", _lua_dag())

        async def main() -> tuple[Any, int, bool]:
            handle = await submit(orch, "lua1", {"n": 4}, headers={})
            seen = committed_count(
                path, f"SELECT COUNT(*) FROM runs WHERE run_id = '{handle.run_id}'"
            )
            result = await handle.result_async()
            return handle, seen, result.ok

        handle, seen, ok = asyncio.run(main())
        assert seen == 1  # acknowledged: committed, without waiting the 60 s delay
        assert ok
        info = orch.get_run(handle.run_id)
        assert info.status == "succeeded"
        # The handle carries the run as created (what POST /workflows/{id}/runs answers).
        assert handle.record.run_id == handle.run_id
        assert handle.record.created_at == info.created_at
        assert handle.record.status in ("queued", "running")


def test_submit_raises_domain_errors_and_committed_raises_when_the_store_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "state.db"
    with Orchestrator(store=str(path)) as orch:
        orch.register_workflow("lua1", "1.0.0", _lua_dag())
        with pytest.raises(WorkflowNotFound):
            asyncio.run(submit(orch, "nope", {}, headers={}))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="cannot commit"):
                asyncio.run(submit(orch, "lua1", {}, headers={}))
        finally:
            other.execute("COMMIT")
            other.close()
        asyncio.run(committed(orch))  # the store writes again: the run above is committed


def test_result_async_times_out_and_leaves_the_run_to_its_other_waiters() -> None:
    """A timed-out (or cancelled) ``result_async`` must not touch the run: with
    ``asyncio.wrap_future`` the run's future was cancelled, and every other waiter got
    ``CancelledError`` instead of the run's result."""
    gate = threading.Event()

    def held(ctx: Any) -> dict[str, Any]:
        gate.wait(30)
        return {"v": 1}

    dag = DAG()
    dag.add_node(Node("held", [], PythonExecutor(held)))
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("held", "1.0.0", dag)
        handle = orch.execute_workflow("held", wait=False)
        assert isinstance(handle, RunHandle)

        async def main() -> tuple[bool, bool]:
            with pytest.raises(TimeoutError, match=r"still running after 0\.05s"):
                await handle.result_async(0.05)
            waiting = asyncio.ensure_future(handle.result_async())
            abandoned = asyncio.ensure_future(handle.result_async())
            await asyncio.sleep(0.01)
            abandoned.cancel()
            gate.set()
            result = await waiting
            return result.ok, abandoned.cancelled()

        ok, abandoned = asyncio.run(main())
        assert ok
        assert abandoned
        assert handle.result(10).ok
        assert orch.get_run(handle.run_id).status == "succeeded"
