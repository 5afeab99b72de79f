"""``dagengine.testing``: doubles, the virtual clock (retry backoff, node and run timeouts,
cron schedules), and the assertion helpers."""

from __future__ import annotations

from typing import Any

import authoring_flows as flows
import pytest
from dagengine import (
    DAG,
    InputError,
    LuaExecutor,
    Node,
    NodeContext,
    Orchestrator,
    PythonExecutor,
    SpecError,
    testing,
)
from dagengine.spec_model import RetryBackoff
from dagengine.triggers import CronTrigger
from dagengine.triggers.scheduler import TriggerScheduler
from processes import wait_for


def test_doubles_replace_nodes_by_output_or_function() -> None:
    seen: list[dict[str, Any]] = []

    def fake_save(ctx: NodeContext) -> dict[str, Any]:
        seen.append(dict(ctx.results))
        return {"saved": True}

    run = testing.run(
        flows.pipeline,
        {"day": "2026-12-06"},
        replace={"extract": {"rows": [5, 6, 7]}, "save": fake_save},
    )
    run.assert_succeeded()
    run.assert_succeeded("extract", "square", "square_2", "total", "save")
    run.assert_output("total", {"sum": 74})
    assert run.output == {"saved": True}
    assert seen == [{"total": {"sum": 74}}]
    assert [ctx.attempt for ctx in run.calls["save"]] == [1]
    assert run.calls["square_2"][0].results == {"extract": {"rows": [5, 6, 7]}}
    # The workflow itself is untouched: its save node still runs the real function.
    assert flows.pipeline.run({"day": "d"}).node_results["save"].status == "failed"


def test_a_double_that_raises_fails_its_node() -> None:
    def broken(ctx: NodeContext) -> None:
        raise ConnectionError("database down")

    run = testing.run(flows.pipeline, {"day": "d"}, replace={"save": broken})
    run.assert_failed()
    run.assert_failed("save", match="database down", error_type="ConnectionError")
    run.assert_attempts("save", 1)
    with pytest.raises(AssertionError, match=r"run failed: .*database down.*save=failed"):
        run.assert_succeeded()
    with pytest.raises(AssertionError, match=r"node 'save' is failed \(ConnectionError"):
        run.assert_output("save", {})


def test_lua_and_plain_dags_can_be_doubled() -> None:
    dag = DAG("plain")
    dag.lua("fetch", "error('network')")
    dag.lua("double", "return {v = results.fetch.v * 2}", deps=["fetch"])
    run = testing.run(dag, replace={"fetch": lambda ctx: {"v": 21}})
    run.assert_output("double", {"v": 42})
    assert run.output is None


def test_bad_replace_and_inputs_are_named() -> None:
    with pytest.raises(SpecError, match=r"replace names 'sav', .* \(did you mean 'save'\?\)"):
        testing.run(flows.pipeline, {"day": "d"}, replace={"sav": {}})
    with pytest.raises(TypeError, match=r"replace\['save'\] must be the node's output"):
        testing.run(flows.pipeline, {"day": "d"}, replace={"save": 3})  # type: ignore[dict-item]
    with pytest.raises(InputError, match=r"inputs.day: required, missing"):
        testing.run(flows.pipeline, {})


def test_retry_backoff_elapses_in_virtual_time() -> None:
    flows.CALLS.clear()
    dag = DAG("retrying")
    backoff = RetryBackoff(initial=60, factor=2, max=3600)
    fails = {"n": 0}

    def flaky(ctx: NodeContext) -> dict[str, Any]:
        fails["n"] += 1
        if fails["n"] < 4:
            raise RuntimeError("try again")
        return {"ok": True}

    dag.add_node(Node("flaky", [], PythonExecutor(flaky), retries=5, retry_backoff=backoff))
    dag.add_node(Node("lua", [], LuaExecutor("error('always')"), retries=2, retry_backoff=backoff))
    clock = testing.VirtualClock(start=1_000_000)
    run = testing.run(dag, clock=clock)
    run.assert_output("flaky", {"ok": True}).assert_attempts("flaky", 4)
    run.assert_failed("lua").assert_attempts("lua", 3)
    # flaky: 60 + 120 + 240; lua: 60 + 120, all without waiting.
    assert clock.elapsed == 600
    assert clock.now() == 1_000_600


def test_node_timeouts_pass_in_virtual_time() -> None:
    clock = testing.VirtualClock()

    def slow(ctx: NodeContext) -> dict[str, Any]:
        clock.sleep(3600)  # an hour, at once
        return {"done": ctx.attempt}

    dag = DAG("timeouts")
    dag.add_node(Node("slow", [], PythonExecutor(slow), timeout="10m", retries=1))
    dag.add_node(Node("quick", [], PythonExecutor(slow), timeout="2h"))
    run = testing.run(dag, clock=clock)
    run.assert_failed(
        "slow", error_type="NodeTimeout", match=r"timed out after 600s \(virtual time\)"
    )
    run.assert_attempts("slow", 2)
    run.assert_output("quick", {"done": 1})


def test_async_code_waits_on_the_clock_too() -> None:
    clock = testing.VirtualClock()

    async def slow(ctx: NodeContext) -> dict[str, Any]:
        await clock.asleep(120)
        return {}

    dag = DAG("async-timeouts")
    dag.add_node(Node("slow", [], PythonExecutor(slow), timeout=60))
    testing.run(dag, clock=clock).assert_failed("slow", error_type="NodeTimeout")
    assert clock.elapsed == 60


def test_a_run_timeout_passes_in_virtual_time() -> None:
    clock = testing.VirtualClock()

    def step(ctx: NodeContext) -> dict[str, Any]:
        clock.sleep(40)
        return {}

    dag = DAG("run-timeout", timeout="1m")
    dag.add_node(Node("a", [], PythonExecutor(step)))
    dag.add_node(Node("b", ["a"], PythonExecutor(step)))
    dag.add_node(Node("c", ["b"], PythonExecutor(step)))
    run = testing.run(dag, clock=clock)
    run.assert_failed(error_type="RunTimeout", match=r"run timed out after 60s")
    run.assert_succeeded("a")
    run.assert_not_run("c")
    assert clock.elapsed == 60


def test_cron_schedules_elapse_on_the_virtual_clock() -> None:
    clock = testing.VirtualClock(start=1_767_225_600)  # 2026-01-01T00:00:00Z
    scheduler = TriggerScheduler(clock)
    orch = Orchestrator(store=":memory:")
    orch.register_workflow(flows.numbers)
    # Virtual hours pass at once but runs take real time: let them overlap.
    trigger = CronTrigger(
        "hourly", "0 * * * *", "numbers", inputs={"day": "d"}, overlap="allow", scheduler=scheduler
    )
    trigger.start(orch)
    try:
        assert clock.advance_schedules(scheduler, 3 * 3600 + 60) == 3
        wait_for(lambda: len(orch.list_runs("numbers", status="succeeded")) == 3, "3 runs")
        records = [orch.store.get_run(info.run_id) for info in orch.list_runs("numbers")]
        times = sorted(rec.inputs["_trigger_time"] for rec in records if rec is not None)
    finally:
        trigger.stop()
        orch.stop()
    assert times == ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"]
    assert clock.now() == 1_767_225_600 + 3 * 3600 + 60


def test_assertion_helpers_say_what_differs() -> None:
    run = testing.run(flows.numbers, {"day": "d"}, replace={"total": {"sum": 1}})
    run.assert_output("total", {"sum": 1})
    with pytest.raises(AssertionError, match=r"node 'total' output \{'sum': 1\}, expected"):
        run.assert_output("total", {"sum": 2})
    with pytest.raises(AssertionError, match=r"no node 'totl' in this run; nodes: extract"):
        run.node("totl")
    with pytest.raises(AssertionError, match=r"node 'extract' tried 1 times, expected 2"):
        run.assert_attempts("extract", 2)
    with pytest.raises(AssertionError, match=r"node 'extract' ran \(1 attempts, succeeded\)"):
        run.assert_not_run("extract")
    with pytest.raises(AssertionError, match=r"node 'extract' is succeeded, expected skipped"):
        run.assert_skipped("extract")
    with pytest.raises(AssertionError, match=r"run succeeded, expected failed"):
        run.assert_failed()
    assert run.raise_for_status() is run
    assert "HarnessRun numbers: succeeded" in repr(run)
