"""Retry from failed across an orchestrator restart: a retry still queued when its
orchestrator stops reuses the old run's completed nodes when the next one resumes it."""

from __future__ import annotations

from pathlib import Path

from dagengine.orchestrator import Engine, Monitor, Orchestrator, RunHandle
from dagengine.orchestrator.retry import retry_run
from orch_tasks import ledger_counts
from processes import wait_for

SPEC = {
    "nodes": [
        {"id": "a", "python": "orch_tasks:count"},
        {"id": "b", "deps": ["a"], "python": "retry_tasks_restart:needs_gate"},
        {"id": "c", "deps": ["b"], "python": "orch_tasks:count"},
    ]
}


def test_a_queued_retry_reuses_completed_nodes_after_a_restart(
    tmp_path: Path, store_target: str
) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    inputs = {"ledger": str(ledger), "gate": str(gate)}
    first = Orchestrator(store=store_target, embedded_engine=False)
    try:
        first.register_engine("local", Engine())
        first.register_workflow("w", "1.0.0", SPEC)
        failed = first.execute_workflow("w", inputs, wait=False)
        assert isinstance(failed, RunHandle)
        wait_for(lambda: first.get_run(failed.run_id).status == "failed", "the first run's end")
        # No engine: the retry waits in the queue until this orchestrator stops.
        first.unregister_engine("local")
        retry, reused = retry_run(first, failed.run_id)
        assert reused == ["a"]
        assert first.get_run(retry.run_id).status == "queued"
    finally:
        first.stop()
    assert ledger_counts(ledger) == {"a": 1}
    gate.touch()
    second = Orchestrator(store=store_target)  # with the embedded engine
    try:
        wait_for(lambda: second.get_run(retry.run_id).status == "succeeded", "the retry's end")
        info = second.get_run(retry.run_id)
        assert info.result is not None
        assert info.result.outputs["a"] == {"node": "a"}
        assert second.store.node_outputs(retry.run_id)["a"] == {"node": "a"}
        [queued] = Monitor(second.events).history(run_id=retry.run_id, types="run.queued")
        assert queued.data["retry_of"] == failed.run_id
        assert queued.data["reused"] == ["a"]
        started = Monitor(second.events).history(run_id=retry.run_id, types="node.started")
        assert sorted(e.node_id or "" for e in started) == ["b", "c"]
    finally:
        second.stop()
    assert ledger_counts(ledger) == {"a": 1, "b": 1, "c": 1}  # a was not run again
