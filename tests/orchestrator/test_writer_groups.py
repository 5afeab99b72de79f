"""The SQLite store's group commit (:mod:`dagengine.orchestrator.store.writer`): node outputs
a run's end in the same group holds are not written only to be deleted, and under a stream of
run ends a commit waits a moment for company while a lone run end never does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from dagengine import DAG
from dagengine.orchestrator import Orchestrator, RunHandle, backends
from dagengine.orchestrator.store import RunRecord, SQLiteStore, open_store
from dagengine.orchestrator.store import writer as writer_module
from dagengine.results import RunStatus


def lua_dag(last: str = "return {z = results.b.y}") -> DAG:
    dag = DAG()
    dag.lua("a", "return {x = (inputs.n or 1) * 2}")
    dag.lua("b", "return {y = results.a.x + 1}", ["a"])
    dag.lua("c", last, ["b"])
    return dag


def test_outputs_a_succeeded_end_in_the_same_group_holds_are_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing commits by itself, and the runs end where they are launched (before the
    # submission's own flush): a run's outputs and its end share one group.
    monkeypatch.setattr(writer_module, "LAZY_COMMIT_DELAY", 60.0)
    monkeypatch.setattr(backends, "INLINE_BUDGET", 30.0)
    with Orchestrator(store=str(tmp_path / "state.db")) as orch:
        statements: list[str] = []
        assert isinstance(orch.store, SQLiteStore)
        orch.store._db.set_trace_callback(statements.append)
        orch.register_workflow("ok", "1.0.0", lua_dag())
        orch.register_workflow("bad", "1.0.0", lua_dag("error('no')"))
        ok = orch.execute_workflow("ok", {"n": 4}, wait=False)
        assert isinstance(ok, RunHandle)
        assert ok.result(timeout=30).status is RunStatus.SUCCEEDED
        outputs = [s for s in statements if s.lstrip().startswith("INSERT INTO node_outputs")]
        assert outputs == []
        assert orch.store.node_outputs(ok.run_id) == {
            "a": {"x": 8},
            "b": {"y": 9},
            "c": {"z": 9},
        }
        # A failed run's outputs are its only record of them: written.
        bad = orch.execute_workflow("bad", {"n": 4}, wait=False)
        assert isinstance(bad, RunHandle)
        assert bad.result(timeout=30).status is RunStatus.FAILED
        outputs = [s for s in statements if s.lstrip().startswith("INSERT INTO node_outputs")]
        assert outputs
        assert orch.store.node_outputs(bad.run_id) == {"a": {"x": 8}, "b": {"y": 9}}


def test_a_run_end_waits_for_company_only_after_a_group_that_had_some(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "URGENT_PACE", 60.0)  # (held: until a reader flushes)
    with open_store(str(tmp_path / "state.db")) as store:
        told: list[str] = []
        ended = threading.Condition()

        def done(run_id: str) -> Callable[[bool], None]:
            def tell(recorded: bool) -> None:
                assert recorded
                with ended:
                    told.append(run_id)
                    ended.notify_all()

            return tell

        def finish(run_id: str) -> None:
            store.create_run_later(RunRecord(run_id, "wf", "1.0.0", created_at=1000.0))
            store.finish_run_later(run_id, None, "succeeded", None, None, done(run_id))

        def wait_told(count: int, timeout: float) -> bool:
            with ended:
                return ended.wait_for(lambda: len(told) >= count, timeout)

        finish("lone")  # the first group had no company before it: not held back
        assert wait_told(1, 30)
        with store._lock:  # two run ends in one group: company
            finish("r1")
            finish("r2")
        assert wait_told(3, 30)
        finish("r3")  # held back, waiting for company...
        assert not wait_told(4, 0.3)
        store.flush()  # ...but a reader's flush commits it at once
        assert wait_told(4, 30)
        assert told == ["lone", "r1", "r2", "r3"]
        r3 = store.get_run("r3")
        assert r3 is not None
        assert r3.status == "succeeded"
        # The group r3 made had no company: the next run end is not held back.
        finish("r4")
        assert wait_told(5, 30)
