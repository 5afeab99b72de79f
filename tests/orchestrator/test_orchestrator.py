"""The orchestrator API in-process: embedded engines, a real core, a real SQLite store (and
a real PostgreSQL for the tests where the store matters: ``store_target``, see tests/pg.py).

Nothing sleeps hoping: runs that must stay busy wait on a gate (a ``threading.Event`` for
in-process closures, a file for spec-based Python nodes, or a Lua loop that only a cancel
stops), and tests wait on conditions with generous bounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine import (
    DAG,
    LuaExecutor,
    Node,
    NodeContext,
    PythonExecutor,
    RunResult,
    RunStatus,
    SubWorkflow,
)
from dagengine.exceptions import DagEngineError, QueueFull, StoreError, VersionNotFound
from dagengine.orchestrator import Config, Engine, Event, Monitor, Orchestrator
from orch_tasks import ledger_counts
from outcomes import handle, result
from pg import committed
from processes import wait_for

WAIT = 30.0
SPIN = {"lua": "while true do end", "limits": {"instructions": 10**15}}


@pytest.fixture(params=["sqlite", "postgres"])
def orch(request: pytest.FixtureRequest) -> Iterator[Orchestrator]:
    """An orchestrator on an in-memory SQLite store, and one on a real PostgreSQL (runs,
    listings, lineage and event replay read the store)."""
    store = ":memory:" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    o = Orchestrator(store=store)
    try:
        yield o
    finally:
        o.stop()


@pytest.fixture
def make_orch() -> Iterator[Callable[..., Orchestrator]]:
    """Orchestrators with custom arguments, all stopped at teardown."""
    made: list[Orchestrator] = []

    def make(**kwargs: Any) -> Orchestrator:
        kwargs.setdefault("store", ":memory:")
        o = Orchestrator(**kwargs)
        made.append(o)
        return o

    try:
        yield make
    finally:
        for o in made:
            o.stop()


class Gate:
    """An in-process Python node that records its run's start and waits to be released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, ctx: NodeContext) -> dict[str, Any]:
        with self._lock:
            self.started.append(ctx.inputs["tag"])
        if not self.release.wait(WAIT):
            raise TimeoutError("the gate was never released")
        return {"tag": ctx.inputs["tag"]}

    def dag(self) -> DAG:
        dag = DAG()
        dag.add_node(Node("gate", executor=PythonExecutor(self)))
        return dag


def lua(source: str, **node: Any) -> dict[str, Any]:
    return {"nodes": [{"id": "n", "lua": source, **node}]}


# --- registration and runs ----------------------------------------------------------------------


def test_a_run_handed_back_is_already_in_the_store_file(
    store_target: str, make_orch: Callable[..., Orchestrator]
) -> None:
    # (store_target first: its schema is dropped after make_orch's orchestrators stopped.)
    # Runs are written with the store's group commit; one whose handle is returned (wait=False,
    # the HTTP API's submit) must be on disk before the caller hears of it.
    o = make_orch(store=store_target)
    o.register_workflow("w", "1.0.0", lua("return {v = 1}"))
    for _ in range(20):
        h = handle(o.execute_workflow("w", wait=False))
        query = f"SELECT COUNT(*) FROM runs WHERE run_id = '{h.run_id}' AND workflow_id = 'w'"
        assert committed(store_target, query) == 1
        assert h.result(timeout=WAIT).ok
    taken = handle(o.execute_workflow("w", wait=False)).run_id
    with pytest.raises(DagEngineError, match="already taken"):
        o.execute_workflow("w", run_id=taken)


def test_register_a_dag_a_spec_and_a_builder_called_once(orch: Orchestrator) -> None:
    dag = DAG()
    dag.add_node(Node("a", executor=LuaExecutor("return {v = inputs.x * 2}")))
    orch.register_workflow("from-dag", "1.0.0", dag)
    orch.register_workflow("from-spec", "1.0.0", lua("return {v = inputs.x + 1}"))
    calls: list[int] = []

    def build() -> dict[str, Any]:
        calls.append(1)
        return lua("return {v = inputs.x - 1}")

    orch.register_workflow("from-builder", "1.0.0", build, metadata={"team": "data"})
    assert calls == [1]
    assert result(orch.execute_workflow("from-dag", {"x": 5})).outputs["a"] == {"v": 10}
    assert result(orch.execute_workflow("from-spec", {"x": 5})).outputs["n"] == {"v": 6}
    assert result(orch.execute_workflow("from-builder", {"x": 5})).outputs["n"] == {"v": 4}
    assert calls == [1]  # not called again per run
    listing = {w.workflow_id: w for w in orch.list_workflows()}
    assert set(listing) == {"from-dag", "from-spec", "from-builder"}
    assert listing["from-builder"].metadata == {"team": "data"}
    assert listing["from-builder"].versions == ("1.0.0",)


def test_wait_false_returns_a_handle(orch: Orchestrator) -> None:
    gate = Gate()
    orch.register_workflow("gated", "1.0.0", gate.dag())
    h = handle(orch.execute_workflow("gated", {"tag": "t"}, wait=False))
    wait_for(lambda: h.status == "running", "the run to start")
    assert not h.done
    with pytest.raises(TimeoutError):
        h.result(timeout=0.01)
    gate.release.set()
    res = h.result(timeout=WAIT)
    assert res.status is RunStatus.SUCCEEDED
    assert res.run_id == h.run_id
    assert res.outputs["gate"] == {"tag": "t"}
    assert h.status == "succeeded"
    assert h.cancel() is False  # finished already


def test_execute_workflow_async(orch: Orchestrator) -> None:
    orch.register_workflow("w", "1.0.0", lua("return {v = inputs.x + 1}"))

    async def main() -> list[RunResult]:
        return await asyncio.gather(*(orch.execute_workflow_async("w", {"x": i}) for i in range(5)))

    results = asyncio.run(main())
    assert [r.outputs["n"]["v"] for r in results] == [1, 2, 3, 4, 5]
    assert len({r.run_id for r in results}) == 5


def test_versions_latest_exact_and_true_semver_order(orch: Orchestrator) -> None:
    for version in ("1.9.0", "1.10.0"):
        orch.register_workflow("w", version, lua(f"return {{version = '{version}'}}"))
    latest = result(orch.execute_workflow("w"))
    assert latest.outputs["n"] == {"version": "1.10.0"}  # not "1.9.0" (string order)
    assert orch.get_run(latest.run_id).version == "1.10.0"
    exact = result(orch.execute_workflow("w", version="1.9.0"))
    assert exact.outputs["n"] == {"version": "1.9.0"}
    assert orch.get_run(exact.run_id).version == "1.9.0"
    with pytest.raises(VersionNotFound, match=r"1\.10\.0"):
        orch.execute_workflow("w", version="1.11.0")
    assert next(w for w in orch.list_workflows() if w.workflow_id == "w").latest == "1.10.0"


def test_get_run_list_runs_and_filters(orch: Orchestrator) -> None:
    orch.register_workflow("ok", "1.0.0", lua("return {}"))
    orch.register_workflow("bad", "1.0.0", lua("error('nope')"))
    ok = [result(orch.execute_workflow("ok")) for _ in range(3)]
    bad = result(orch.execute_workflow("bad"))
    assert bad.status is RunStatus.FAILED
    info = orch.get_run(bad.run_id)
    assert (info.workflow_id, info.version, info.status, info.attempt) == (
        "bad",
        "1.0.0",
        "failed",
        1,
    )
    assert info.engine_id == "local"
    assert info.error is not None
    assert "nope" in info.error["message"]
    assert info.result is not None
    assert info.result.status is RunStatus.FAILED
    assert info.started_at is not None
    assert info.finished_at is not None
    assert info.created_at <= info.started_at <= info.finished_at
    every = orch.list_runs()
    assert [r.run_id for r in every] == [bad.run_id, *reversed([r.run_id for r in ok])]
    assert {r.run_id for r in orch.list_runs(workflow_id="ok")} == {r.run_id for r in ok}
    assert [r.run_id for r in orch.list_runs(status="failed")] == [bad.run_id]
    assert len(orch.list_runs(limit=2)) == 2
    assert [r.run_id for r in orch.list_runs(limit=2, offset=2)] == [r.run_id for r in every[2:]]
    assert orch.list_runs(workflow_id="ok", status="failed") == []
    with pytest.raises(DagEngineError, match="no run"):
        orch.get_run("nope")


# --- cancellation -------------------------------------------------------------------------------


def test_a_run_whose_attempt_cannot_be_prepared_fails_and_the_next_ones_run(
    make_orch: Callable[..., Orchestrator],
) -> None:
    # What an attempt starts with (a retry's outputs, cache entries) is read from the store
    # when it is launched. When that read fails, the run fails naming the error and the
    # dispatcher goes on: it died of it, and every run queued after waited forever.
    o = make_orch()
    o.register_workflow("w", "1.0.0", lua("return {v = inputs.x}"))
    completed = o._reuse.completed
    calls: list[str] = []

    def failing_once(run_id: str, attempt: int) -> dict[str, dict[str, Any]]:
        calls.append(run_id)
        if len(calls) == 1:
            raise StoreError("the database is unreachable (injected by the test)")
        return completed(run_id, attempt)

    o._reuse.completed = failing_once  # type: ignore[method-assign]
    first = handle(o.execute_workflow("w", {"x": 1}, wait=False)).result(timeout=WAIT)
    assert first.status is RunStatus.FAILED
    assert first.error is not None
    assert "database is unreachable" in first.error.message
    assert result(o.execute_workflow("w", {"x": 2})).outputs["n"] == {"v": 2}
    assert len(calls) == 2


def test_cancel_a_queued_run(make_orch: Callable[..., Orchestrator]) -> None:
    orch = make_orch(embedded_engine=False)  # no engine: runs wait
    orch.register_workflow("w", "1.0.0", lua("return {}"))
    h = handle(orch.execute_workflow("w", wait=False))
    assert h.status == "queued"
    assert orch.cancel_run(h.run_id) is True
    res = h.result(timeout=WAIT)
    assert res.status is RunStatus.CANCELLED
    assert orch.get_run(h.run_id).status == "cancelled"
    assert orch.get_run(h.run_id).attempt == 0  # never dispatched
    assert orch.cancel_run(h.run_id) is False
    # It is gone from the queue: an engine joining now runs nothing.
    orch.register_engine("late", Engine())
    other = result(orch.execute_workflow("w"))
    assert other.ok
    assert orch.get_run(h.run_id).status == "cancelled"


def test_cancel_a_running_run_interrupts_its_lua_node(orch: Orchestrator) -> None:
    orch.register_workflow("spin", "1.0.0", {"nodes": [{"id": "spin", **SPIN}]})
    h = handle(orch.execute_workflow("spin", wait=False))
    monitor = Monitor(orch)
    sub = monitor.subscribe(run_id=h.run_id, types=["node.started"], after=0)
    try:
        assert sub.get(timeout=WAIT) is not None, "the spin node never started"
    finally:
        monitor.close()
    started = time.monotonic()
    assert orch.cancel_run(h.run_id) is True
    res = h.result(timeout=WAIT)
    assert res.status is RunStatus.CANCELLED
    assert time.monotonic() - started < 10
    assert orch.get_run(h.run_id).status == "cancelled"
    # The engine slot is free again.
    orch.register_workflow("w", "1.0.0", lua("return {}"))
    assert result(orch.execute_workflow("w")).ok
    assert orch.engines()["local"].active == 0


# --- capacity, queueing, balancing --------------------------------------------------------------


def test_queue_full_past_the_limit_and_fifo_when_engines_are_full(
    make_orch: Callable[..., Orchestrator],
) -> None:
    orch = make_orch(config=Config(queue_limit=3, store_path=":memory:"), embedded_engine=False)
    orch.register_engine("only", Engine(capacity=1))
    gate = Gate()
    orch.register_workflow("gated", "1.0.0", gate.dag())
    first = handle(orch.execute_workflow("gated", {"tag": "r0"}, wait=False))
    wait_for(lambda: gate.started == ["r0"], "the first run to take the only slot")
    waiting = [
        handle(orch.execute_workflow("gated", {"tag": f"r{i}"}, wait=False)) for i in (1, 2, 3)
    ]
    assert [h.status for h in waiting] == ["queued"] * 3
    with pytest.raises(QueueFull, match=r"DAGENGINE_QUEUE_LIMIT=3") as caught:
        orch.execute_workflow("gated", {"tag": "r4"}, wait=False)
    assert caught.value.limit == 3
    assert "at capacity" in str(caught.value)
    assert len(orch.list_runs(limit=100)) == 4  # the refused run was never recorded
    gate.release.set()
    for h in [first, *waiting]:
        assert h.result(timeout=WAIT).ok
    assert gate.started == ["r0", "r1", "r2", "r3"]  # in submission order
    # The queue has room again.
    assert handle(orch.execute_workflow("gated", {"tag": "r5"}, wait=False)).result(WAIT).ok


def test_queue_limit_zero_starts_runs_that_need_not_wait_and_refuses_the_rest(
    make_orch: Callable[..., Orchestrator],
) -> None:
    orch = make_orch(config=Config(queue_limit=0, store_path=":memory:"), embedded_engine=False)
    orch.register_engine("only", Engine(capacity=1))
    gate = Gate()
    orch.register_workflow("gated", "1.0.0", gate.dag())
    first = handle(orch.execute_workflow("gated", {"tag": "r0"}, wait=False))
    wait_for(lambda: gate.started == ["r0"], "the run to start at once")
    with pytest.raises(QueueFull, match=r"DAGENGINE_QUEUE_LIMIT=0"):
        orch.execute_workflow("gated", {"tag": "r1"}, wait=False)
    gate.release.set()
    assert first.result(timeout=WAIT).ok
    assert handle(orch.execute_workflow("gated", {"tag": "r2"}, wait=False)).result(WAIT).ok


@pytest.mark.parametrize("balancer", ["consistent-hash", "round-robin", "least-loaded"])
def test_runs_spread_over_two_engines_within_capacity(
    make_orch: Callable[..., Orchestrator], balancer: str
) -> None:
    orch = make_orch(
        config=Config(load_balancer_type=balancer, store_path=":memory:"), embedded_engine=False
    )
    orch.register_engine("e1", Engine(capacity=2))
    orch.register_engine("e2", Engine(capacity=2))
    gate = Gate()
    orch.register_workflow("gated", "1.0.0", gate.dag())
    handles = [
        handle(orch.execute_workflow("gated", {"tag": f"r{i}"}, wait=False)) for i in range(5)
    ]
    wait_for(lambda: len(gate.started) == 4, "four runs to start")
    loads = orch.engines()
    assert (loads["e1"].active, loads["e2"].active) == (2, 2)
    engines = [orch.get_run(h.run_id).engine_id for h in handles[:4]]
    assert sorted(e or "" for e in engines) == ["e1", "e1", "e2", "e2"]
    assert handles[4].status == "queued"  # both full: it waits
    gate.release.set()
    for h in handles:
        assert h.result(timeout=WAIT).ok
    assert orch.get_run(handles[4].run_id).engine_id in ("e1", "e2")


def test_a_per_run_key_spreads_one_workflow_over_engines(
    make_orch: Callable[..., Orchestrator],
) -> None:
    orch = make_orch(embedded_engine=False)
    for i in range(3):
        orch.register_engine(f"e{i}", Engine(capacity=100))
    orch.register_workflow("w", "1.0.0", lua("return {}"))
    same = {result(orch.execute_workflow("w")).run_id for _ in range(6)}
    assert len({orch.get_run(r).engine_id for r in same}) == 1  # key = workflow id
    keyed = [result(orch.execute_workflow("w", key=f"customer-{i}")).run_id for i in range(30)]
    assert len({orch.get_run(r).engine_id for r in keyed}) == 3


# --- sub-workflows ------------------------------------------------------------------------------


CHILD = {"nodes": [{"id": "echo", "lua": "return {x = inputs.x, prep = inputs.prep}"}]}
PARENT = {
    "nodes": [
        {"id": "prep", "lua": "return {n = inputs.x * 10}"},
        {"id": "sub", "deps": ["prep"], "workflow": "child@^1.0"},
        {"id": "after", "deps": ["sub"], "lua": "return {seen = results.sub.echo.prep.n}"},
    ]
}


def test_subworkflow_output_inputs_lineage_and_resolved_versions(orch: Orchestrator) -> None:
    orch.register_workflow("child", "1.0.0", lua("return {old = true}"))
    orch.register_workflow("child", "1.2.0", CHILD)
    orch.register_workflow("child", "2.0.0", lua("return {major = 2}"))
    orch.register_workflow("parent", "1.0.0", PARENT)
    res = result(orch.execute_workflow("parent", {"x": 4}))
    assert res.ok, res.error
    # The node's output is the child's outputs; the child got the parent's inputs plus the
    # outputs of the node's dependencies.
    assert res.outputs["sub"] == {"echo": {"x": 4, "prep": {"n": 40}}}
    assert res.outputs["after"] == {"seen": 40}
    parent = orch.get_run(res.run_id)
    assert parent.resolved_versions == {"child@^1.0": "1.2.0"}
    coordinator = orch.get_subworkflow_coordinator()
    children = coordinator.children(res.run_id)
    assert len(children) == 1
    child = children[0]
    assert (child.workflow_id, child.version, child.status) == ("child", "1.2.0", "succeeded")
    assert (child.parent_run_id, child.parent_node_id, child.depth) == (res.run_id, "sub", 1)
    assert coordinator.status(child.run_id) == "succeeded"
    assert coordinator.status(res.run_id) == "succeeded"
    assert coordinator.children(child.run_id) == []
    assert coordinator.lineage(child.run_id) == ["parent@1.0.0", "child@1.2.0"]


def test_a_failing_child_fails_the_parent_node(orch: Orchestrator) -> None:
    orch.register_workflow("child", "1.0.0", lua("error('child broke')"))
    orch.register_workflow("parent", "1.0.0", {"nodes": [{"id": "sub", "workflow": "child"}]})
    res = result(orch.execute_workflow("parent"))
    assert res.status is RunStatus.FAILED
    error = res.node_results["sub"].error
    assert error is not None
    assert error.type == "SubWorkflowError"
    assert "child broke" in error.message


def test_cancelling_the_parent_cancels_its_running_child(orch: Orchestrator) -> None:
    orch.register_workflow("spinner", "1.0.0", {"nodes": [{"id": "spin", **SPIN}]})
    orch.register_workflow("parent", "1.0.0", {"nodes": [{"id": "sub", "workflow": "spinner"}]})
    h = handle(orch.execute_workflow("parent", wait=False))
    coordinator = orch.get_subworkflow_coordinator()
    wait_for(
        lambda: [c.status for c in coordinator.children(h.run_id)] == ["running"],
        "the child to run",
    )
    assert h.cancel() is True
    assert h.result(timeout=WAIT).status is RunStatus.CANCELLED
    (child,) = coordinator.children(h.run_id)
    wait_for(lambda: coordinator.status(child.run_id) == "cancelled", "the child to be cancelled")


def test_recursion_depth_limit_names_the_chain(make_orch: Callable[..., Orchestrator]) -> None:
    orch = make_orch(config=Config(max_subworkflow_depth=3, store_path=":memory:"))
    orch.register_workflow("loop", "1.0.0", {"nodes": [{"id": "again", "workflow": "loop@^1"}]})
    res = result(orch.execute_workflow("loop"))
    assert res.status is RunStatus.FAILED
    assert res.error is not None
    message = res.error.message
    assert "depth limit 3 exceeded" in message
    assert "loop@1.0.0 -> loop@1.0.0 -> loop@1.0.0 -> loop@1.0.0 -> loop@^1" in message
    # Not wrapped once per level.
    assert message.count("depth limit") == 1
    runs = orch.list_runs(workflow_id="loop")
    assert sorted(r.depth for r in runs) == [0, 1, 2, 3]
    assert {r.status for r in runs} == {"failed"}


# --- durability ---------------------------------------------------------------------------------


def test_queued_runs_resume_on_a_new_orchestrator(store_target: str) -> None:
    store = store_target
    first = Orchestrator(store=store, embedded_engine=False)
    try:
        first.register_workflow("w", "1.0.0", lua("return {v = inputs.i * 2}"))
        handles = [handle(first.execute_workflow("w", {"i": i}, wait=False)) for i in range(5)]
        assert {h.status for h in handles} == {"queued"}
    finally:
        first.stop()
    with pytest.raises(DagEngineError, match="stopped before run"):
        handles[0].result(timeout=1)
    second = Orchestrator(store=store)  # with the embedded engine
    try:
        ids = [h.run_id for h in handles]
        wait_for(
            lambda: all(second.get_run(r).status == "succeeded" for r in ids),
            "the resumed runs to succeed",
        )
        for i, run_id in enumerate(ids):
            info = second.get_run(run_id)
            assert info.result is not None
            assert info.result.outputs["n"] == {"v": 2 * i}
            assert info.attempt == 1
    finally:
        second.stop()
    # Finished runs and their outputs are still there after another restart.
    third = Orchestrator(store=store, embedded_engine=False)
    try:
        assert len(third.list_runs(status="succeeded")) == 5
        info = third.get_run(ids[3])
        assert info.result is not None
        assert info.result.outputs["n"] == {"v": 6}
        assert third.store.node_outputs(ids[3]) == {"n": {"v": 6}}
    finally:
        third.stop()


def test_a_resumed_run_does_not_rerun_completed_nodes(tmp_path: Path, store_target: str) -> None:
    store = store_target
    ledger = tmp_path / "ledger"
    gate = tmp_path / "gate"
    spec = {
        "nodes": [
            {"id": "a", "python": "orch_tasks:count"},
            {"id": "b", "deps": ["a"], "python": "orch_tasks:gated"},
            {"id": "c", "deps": ["b"], "python": "orch_tasks:count"},
        ]
    }
    inputs = {"ledger": str(ledger), "gate": str(gate)}
    first = Orchestrator(store=store)
    try:
        first.register_workflow("resumable", "1.0.0", spec)
        h = handle(first.execute_workflow("resumable", inputs, wait=False))
        wait_for(lambda: "a" in first.store.node_outputs(h.run_id), "node a's output stored")
        assert first.get_run(h.run_id).status == "running"
    finally:
        first.stop()  # b is still waiting for its gate
    gate.touch()
    second = Orchestrator(store=store)
    try:
        wait_for(lambda: second.get_run(h.run_id).status == "succeeded", "the resumed run")
        info = second.get_run(h.run_id)
        assert info.attempt == 2
        assert info.result is not None
        assert info.result.outputs["b"] == {"node": "b", "after": ["a"]}
        assert info.result.outputs["a"] == {"node": "a"}
    finally:
        second.stop()
    counts = ledger_counts(ledger)
    assert counts["a"] == 1  # not run again
    assert counts["c"] == 1
    assert counts["b"] >= 1


def test_a_resumed_parent_waits_for_its_resumed_child_instead_of_starting_another(
    tmp_path: Path, store_target: str
) -> None:
    store = store_target
    ledger = tmp_path / "ledger"
    gate = tmp_path / "gate"
    inputs = {"ledger": str(ledger), "gate": str(gate)}
    first = Orchestrator(store=store)
    try:
        first.register_workflow(
            "child", "1.0.0", {"nodes": [{"id": "slow", "python": "orch_tasks:gated"}]}
        )
        first.register_workflow("parent", "1.0.0", {"nodes": [{"id": "sub", "workflow": "child"}]})
        h = handle(first.execute_workflow("parent", inputs, wait=False))
        coordinator = first.get_subworkflow_coordinator()
        wait_for(
            lambda: [c.status for c in coordinator.children(h.run_id)] == ["running"],
            "the child to run",
        )
    finally:
        first.stop()
    gate.touch()
    second = Orchestrator(store=store)
    try:
        wait_for(lambda: second.get_run(h.run_id).status == "succeeded", "the resumed parent")
        (child,) = second.get_subworkflow_coordinator().children(h.run_id)
        assert child.status == "succeeded"
        info = second.get_run(h.run_id)
        assert info.result is not None
        assert info.result.outputs["sub"] == {"slow": {"node": "slow", "after": []}}
    finally:
        second.stop()
    assert ledger_counts(ledger) == {"slow": 1}


def test_a_child_that_ended_between_the_read_and_the_look_is_not_started_again(
    store_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent node looking for the child it started reads the store, then the runs in
    flight: a child whose end was committed between the two (its record read as running,
    then gone from the runs in flight) is read again, not taken for a lost one and started
    a second time (a flaky resume test on PostgreSQL before)."""
    orch = Orchestrator(store=store_target)
    try:
        orch.register_workflow("child", "1.0.0", lua("return {v = 1}"))
        orch.register_workflow("parent", "1.0.0", {"nodes": [{"id": "sub", "workflow": "child"}]})
        parent = handle(orch.execute_workflow("parent", {}, wait=False))
        assert parent.result(timeout=WAIT).ok
        coordinator = orch.get_subworkflow_coordinator()
        (child,) = coordinator.children(parent.run_id)
        listed = orch.store.list_runs

        def stale(**query: Any) -> Any:  # the read taken just before the child's end
            return [dataclasses.replace(rec, status="running") for rec in listed(**query)]

        monkeypatch.setattr(orch.store, "list_runs", stale)
        found = coordinator._existing_child(parent.run_id, "sub")
        assert found is not None
        assert found.run_id == child.run_id
        assert found.result(timeout=WAIT).outputs["n"] == {"v": 1}
    finally:
        orch.stop()


# --- monitor ------------------------------------------------------------------------------------


def drain(sub: Any, until: Callable[[Event], bool]) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        event = sub.get(timeout=0.5)
        if event is None:
            continue
        events.append(event)
        if until(event):
            return events
    pytest.fail(f"the awaited event never came; got {[e.type for e in events]}")


def test_monitor_sees_a_runs_events_filters_and_replays(orch: Orchestrator) -> None:
    orch.register_workflow("two", "1.0.0", {
        "nodes": [
            {"id": "a", "lua": "return {x = 1}"},
            {"id": "b", "deps": ["a"], "lua": "return {y = 2}"},
        ]
    })  # fmt: skip
    orch.register_workflow("bad", "1.0.0", lua("error('nope')"))
    monitor = Monitor(orch)
    try:
        cursor = orch.events.last_seq
        everything = monitor.subscribe(workflow_id="two")
        finished = monitor.subscribe(types=["run.completed", "run.failed"])
        errors = monitor.subscribe(min_severity="error")
        res = result(orch.execute_workflow("two"))
        events = drain(everything, lambda e: e.type == "run.completed")
        assert all(e.run_id == res.run_id and e.workflow_id == "two" for e in events)
        types = [e.type for e in events]
        assert types[:2] == ["run.queued", "run.started"]
        assert types[-1] == "run.completed"
        nodes = [(e.type, e.node_id) for e in events if e.type.startswith("node.")]
        assert nodes == [
            ("node.started", "a"),
            ("node.succeeded", "a"),
            ("node.started", "b"),
            ("node.succeeded", "b"),
        ]
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert {e.severity for e in events} == {"info"}
        assert events[1].engine_id == "local"

        bad = result(orch.execute_workflow("bad"))
        failed = drain(errors, lambda e: e.type == "run.failed")
        assert [(e.type, e.severity) for e in failed] == [
            ("node.failed", "error"),
            ("run.failed", "error"),
        ]
        assert failed[-1].run_id == bad.run_id
        ends = drain(finished, lambda e: e.type == "run.failed")
        assert [(e.type, e.run_id) for e in ends] == [
            ("run.completed", res.run_id),
            ("run.failed", bad.run_id),
        ]

        # After the fact: replay from the cursor, from the store.
        replay = monitor.subscribe(run_id=res.run_id, after=cursor)
        replayed = drain(replay, lambda e: e.type == "run.completed")
        assert [e.seq for e in replayed] == [e.seq for e in events]
        assert replay.get(timeout=0.05) is None  # nothing else for that run
    finally:
        monitor.close()


def test_a_subworkflow_runs_the_version_its_parent_recorded(orch: Orchestrator) -> None:
    # The parent records child@^1.0 -> 1.0.0 at its start; 1.1.0 registered while the parent
    # runs must not be what runs (it did: the range was resolved again at the node's start).
    gate = threading.Event()

    def hold(ctx: NodeContext) -> dict[str, Any]:
        assert gate.wait(WAIT)
        return {}

    orch.register_workflow("child", "1.0.0", lua("return {v = '1.0.0'}"))
    parent = DAG("parent", "1.0.0")
    parent.add_node(Node("first", [], PythonExecutor(hold)))
    parent.add_node(Node("sub", ["first"], SubWorkflow("child", "^1.0")))
    orch.register_workflow("parent", "1.0.0", parent)
    h = handle(orch.execute_workflow("parent", wait=False))
    wait_for(lambda: orch.get_run(h.run_id).status == "running", "the parent to start")
    assert orch.get_run(h.run_id).resolved_versions == {"child@^1.0": "1.0.0"}
    orch.register_workflow("child", "1.1.0", lua("return {v = '1.1.0'}"))
    gate.set()
    res = h.result(timeout=WAIT)
    assert res.ok, res.error
    assert res.outputs["sub"] == {"n": {"v": "1.0.0"}}
    (child,) = orch.get_subworkflow_coordinator().children(h.run_id)
    assert child.version == "1.0.0"
    # A new run of the parent records (and runs) the newer one.
    again = result(orch.execute_workflow("parent"))
    assert again.outputs["sub"] == {"n": {"v": "1.1.0"}}


def test_a_plain_orchestrator_reads_its_limits_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, make_orch: Callable[..., Orchestrator]
) -> None:
    monkeypatch.setenv("DAGENGINE_QUEUE_LIMIT", "7")
    monkeypatch.setenv("DAGENGINE_MAX_SUBWORKFLOW_DEPTH", "3")
    monkeypatch.setenv("DISCOVERY", "static")  # distributed settings do not apply here
    orch = make_orch(store=":memory:")
    assert orch.config.queue_limit == 7
    assert orch.config.max_subworkflow_depth == 3
    assert orch.get_subworkflow_coordinator().max_depth == 3
    assert orch.config.discovery == "none"


STUCK_SPEC = {
    "nodes": [
        {"id": "a", "python": "resume_later_tasks:one"},
        {"id": "b", "deps": ["a"], "lua": "return {v = results.a.v + 1}"},
    ]
}


def test_a_stored_run_whose_workflow_does_not_build_yet_waits_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run is stored while its python: node's module is importable; the next orchestrator
    # opens the store while it is not (the folder is not on sys.path yet). The run must wait,
    # be reported, and resume once the module can be imported, not fail at once.
    import importlib
    import sys

    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "resume_later_tasks.py").write_text("def one(ctx):\n    return {'v': 1}\n")
    store = str(tmp_path / "runs.db")
    monkeypatch.syspath_prepend(str(modules))
    first = Orchestrator(store=store, embedded_engine=False)
    try:
        first.register_workflow("later", "1.0.0", STUCK_SPEC)
        waiting = handle(first.execute_workflow("later", wait=False)).run_id
        to_cancel = handle(first.execute_workflow("later", wait=False)).run_id
    finally:
        first.stop()
    sys.path.remove(str(modules))
    sys.modules.pop("resume_later_tasks", None)
    importlib.invalidate_caches()

    second = Orchestrator(store=store)
    try:
        events = second.store.events(run_id=waiting, types=["run.resume_waiting"])
        assert len(events) == 1
        assert "resume_later_tasks" in events[0].data["problem"]
        assert second.get_run(waiting).status == "queued"  # not failed
        assert second.cancel_run(to_cancel) is True  # a waiting run can be cancelled
        wait_for(lambda: second.get_run(to_cancel).status == "cancelled", "the cancel")
        sys.path.insert(0, str(modules))  # the module becomes importable: tried again
        wait_for(lambda: second.get_run(waiting).status == "succeeded", "the run to resume")
        info = second.get_run(waiting)
        assert info.result is not None
        assert info.result.outputs["b"] == {"v": 2}
        assert second.get_run(to_cancel).status == "cancelled"
    finally:
        second.stop()
