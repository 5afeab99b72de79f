"""Running DAGs through the Python API: scheduling semantics, Python nodes, events."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from dagengine import (
    DAG,
    DuplicateNodeError,
    LocalRun,
    LuaExecutor,
    Node,
    NodeContext,
    NodeEvent,
    NodeStatus,
    NoopExecutor,
    PythonExecutor,
    RetryBackoff,
    RunCancelled,
    RunFailed,
    RunStatus,
    RunTimeout,
    SpecError,
    SubWorkflow,
    UnknownDependencyError,
    ValidationError,
)

# Generous upper bound for "this must happen"; tests wait on conditions, never on this.
PATIENCE = 10.0


def py(fn: Any) -> PythonExecutor:
    return PythonExecutor(fn)


def wait_for_cancel(ctx: NodeContext, seen: dict[str, bool] | None = None) -> dict[str, Any]:
    """Block until the run cancels this attempt (or PATIENCE passes: then the test fails)."""
    deadline = time.monotonic() + PATIENCE
    while not ctx.cancelled:
        if time.monotonic() > deadline:
            return {"cancelled": False}
        time.sleep(0.005)
    if seen is not None:
        seen[ctx.node_id] = True
    return {"cancelled": True}


def eventually(condition: Any) -> bool:
    """Poll ``condition`` until true or PATIENCE passes (for effects that may finish after a
    run has ended, such as an abandoned attempt noticing its cancellation)."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def build(*nodes: Node, **kwargs: Any) -> DAG:
    dag = DAG("test", **kwargs)
    dag.add_nodes(nodes)
    return dag


# --- structure ----------------------------------------------------------------------------------


def test_structure_of_a_diamond() -> None:
    dag = build(
        Node("d", ["b", "c"]),
        Node("b", ["a"]),
        Node("c", ["a"]),
        Node("a"),
    )
    order = dag.topological_order()
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    assert [sorted(level) for level in dag.levels()] == [["a"], ["b", "c"], ["d"]]
    assert dag.roots() == ["a"]
    assert dag.leaves() == ["d"]
    assert dag.edge_count == 4
    assert dag.preprocess() is dag


def test_duplicate_id_raises_at_once() -> None:
    dag = build(Node("a"))
    with pytest.raises(DuplicateNodeError) as info:
        dag.add_node(Node("a"))
    assert info.value.node_id == "a"
    assert len(dag) == 1


def test_validation_errors_raise_before_anything_runs() -> None:
    calls: list[str] = []
    dag = build(Node("a", [], py(lambda ctx: calls.append(ctx.node_id))), Node("b", ["ghost"]))
    with pytest.raises(UnknownDependencyError):
        dag.run()
    assert calls == []


def test_structure_is_recomputed_after_adding_nodes() -> None:
    dag = build(Node("a"))
    assert dag.levels() == [["a"]]
    dag.add_node(Node("b", ["a"]))
    assert dag.levels() == [["a"], ["b"]]
    assert dag.run().outputs == {"a": {}, "b": {}}


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda: Node(1), TypeError, "Node id must be a str"),  # type: ignore[arg-type]
        (lambda: Node(""), SpecError, "must not be empty"),
        (lambda: Node("a", "b"), TypeError, "deps must be a list of node ids"),
        (lambda: Node("a", [1]), TypeError, "deps must be strs"),  # type: ignore[list-item]
        (lambda: Node("a", ["b", "b"]), SpecError, "lists 'b' twice"),
        (lambda: Node("a", [], print), TypeError, "wrap a function in PythonExecutor"),
        (lambda: Node("a", [], 5), TypeError, "executor must be"),  # type: ignore[arg-type]
        (lambda: Node("a", retries=-1), SpecError, "retries must be >= 0"),
        (lambda: Node("a", retries=1.5), TypeError, "retries must be an int"),  # type: ignore[arg-type]
        (lambda: Node("a", timeout="soon"), SpecError, "invalid timeout"),
        (lambda: Node("a", timeout=0), SpecError, "timeout must be positive"),
        (lambda: Node("a", retry_backoff={"initial": 1}), TypeError, "RetryBackoff"),  # type: ignore[arg-type]
        (lambda: RetryBackoff(factor=0.5), SpecError, "factor must be >= 1"),
        (lambda: RetryBackoff(initial=-1), SpecError, "initial must be a finite number >= 0"),
        (lambda: PythonExecutor(3), TypeError, "needs a callable"),  # type: ignore[arg-type]
        (lambda: SubWorkflow("child", "^x.y"), SpecError, "invalid version range"),
        (lambda: DAG(version="1.0"), SpecError, "invalid version"),
        (lambda: DAG(max_parallel=0), SpecError, "max_parallel must be positive"),
    ],
)
def test_bad_arguments_name_the_field(make: Any, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        make()


def test_node_accepts_duration_strings_and_lists() -> None:
    node = Node("a", ["x", "y"], timeout="1m30s", retries=2)
    assert node.deps == ("x", "y")
    assert node.timeout == 90.0
    assert node.kind == "noop"
    assert RetryBackoff(0.5, 2, 4).delay(1) == 0.5
    assert RetryBackoff(0.5, 2, 4).delay(4) == 4.0


# --- basic runs ---------------------------------------------------------------------------------


def test_results_and_inputs_flow_to_children() -> None:
    def source(ctx: NodeContext) -> dict[str, Any]:
        return {"value": ctx.inputs["x"] + 1}

    def sink(ctx: NodeContext) -> dict[str, Any]:
        return {"sum": sum(r["value"] for r in ctx.results.values()), "seen": sorted(ctx.results)}

    dag = build(
        Node("a", [], py(source)),
        Node("b", [], py(source)),
        Node("c", ["a", "b"], py(sink)),
    )
    result = dag.run({"x": 10})
    assert result.ok
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {
        "a": {"value": 11},
        "b": {"value": 11},
        "c": {"sum": 22, "seen": ["a", "b"]},
    }
    node = result.node_results["c"]
    assert node.status is NodeStatus.SUCCEEDED
    assert node.attempts == 1
    assert node.started_at is not None
    assert node.finished_at is not None
    assert node.started_at <= node.finished_at
    assert result.duration >= 0
    assert result.raise_for_status() is result


def test_context_identifies_the_call() -> None:
    seen: dict[str, Any] = {}

    def probe(ctx: NodeContext) -> None:
        seen.update(node=ctx.node_id, run=ctx.run_id, attempt=ctx.attempt, cancelled=ctx.cancelled)

    result = build(Node("p", [], py(probe))).run(run_id="my-run")
    assert result.run_id == "my-run"
    assert seen == {"node": "p", "run": "my-run", "attempt": 1, "cancelled": False}
    generated = build(Node("p")).run().run_id
    assert len(generated) == 32
    assert int(generated, 16) >= 0


def test_inputs_are_read_only() -> None:
    def mutate(ctx: NodeContext) -> None:
        ctx.inputs["x"] = 2  # type: ignore[index]

    result = build(Node("m", [], py(mutate))).run({"x": 1})
    assert result.status is RunStatus.FAILED
    error = result.node_results["m"].error
    assert error is not None
    assert error.type == "TypeError"


def test_returning_none_means_empty_output() -> None:
    result = build(Node("n", [], py(lambda ctx: None)), Node("o", [], NoopExecutor())).run()
    assert result.outputs == {"n": {}, "o": {}}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(5, "returned int"), ([1], "returned list"), ("x", "returned str"), ({1: 2}, "int key")],
)
def test_bad_return_value_fails_the_node(value: Any, fragment: str) -> None:
    result = build(Node("bad", [], py(lambda ctx: value))).run()
    error = result.node_results["bad"].error
    assert result.status is RunStatus.FAILED
    assert error is not None
    assert error.type == "TypeError"
    assert fragment in error.message
    assert "node bad" in error.message


def test_exception_is_recorded_with_type_message_and_traceback() -> None:
    def explode(ctx: NodeContext) -> None:
        raise ValueError("bad thing happened")

    result = build(Node("x", [], py(explode))).run()
    node = result.node_results["x"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type == "ValueError"
    assert node.error.message == "bad thing happened"
    assert node.error.traceback is not None
    assert "explode" in node.error.traceback
    assert "ValueError: bad thing happened" in node.error.traceback
    assert result.error is not None
    assert result.error.node_id == "x"
    with pytest.raises(RunFailed, match="bad thing happened") as info:
        result.raise_for_status()
    assert info.value.result is result


def test_parallel_branches_run_concurrently() -> None:
    # Each branch waits for the other at a barrier: only concurrent execution gets through.
    barrier = threading.Barrier(2, timeout=PATIENCE)

    def meet(ctx: NodeContext) -> dict[str, Any]:
        barrier.wait()
        return {"met": True}

    dag = build(
        Node("a"), Node("b", ["a"], py(meet)), Node("c", ["a"], py(meet)), Node("d", ["b", "c"])
    )
    result = dag.run()
    assert result.ok, result.error
    assert result.outputs["b"] == result.outputs["c"] == {"met": True}


def test_max_parallel_is_respected() -> None:
    lock = threading.Lock()
    state = {"running": 0, "peak": 0}
    # Pairs meet at the barrier, so two must run together; the counter shows never three.
    barrier = threading.Barrier(2, timeout=PATIENCE)

    def counted(ctx: NodeContext) -> None:
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        try:
            barrier.wait()
        finally:
            with lock:
                state["running"] -= 1

    dag = build(*(Node(f"n{i}", [], py(counted)) for i in range(8)))
    result = dag.run(max_parallel=2)
    assert result.ok, result.error
    assert state["peak"] == 2


def test_dag_default_max_parallel_applies() -> None:
    lock = threading.Lock()
    state = {"running": 0, "peak": 0}

    def counted(ctx: NodeContext) -> None:
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        time.sleep(0.005)  # widen the window in which overlap would show
        with lock:
            state["running"] -= 1

    dag = build(*(Node(f"n{i}", [], py(counted)) for i in range(6)), max_parallel=1)
    assert dag.run().ok
    assert state["peak"] == 1


# --- failure semantics --------------------------------------------------------------------------


def test_failure_skips_descendants_and_independent_branch_runs() -> None:
    def fail(ctx: NodeContext) -> None:
        raise RuntimeError("nope")

    dag = build(
        Node("root"),
        Node("bad", ["root"], py(fail)),
        Node("child", ["bad"]),
        Node("grandchild", ["child", "other"]),
        Node("other", ["root"]),
        Node("other_leaf", ["other"]),
    )
    result = dag.run()
    assert result.status is RunStatus.FAILED
    status = {nid: res.status for nid, res in result.node_results.items()}
    assert status == {
        "root": NodeStatus.SUCCEEDED,
        "bad": NodeStatus.FAILED,
        "child": NodeStatus.SKIPPED,
        "grandchild": NodeStatus.SKIPPED,
        "other": NodeStatus.SUCCEEDED,
        "other_leaf": NodeStatus.SUCCEEDED,
    }
    assert set(result.outputs) == {"root", "other", "other_leaf"}
    assert result.node_results["child"].attempts == 0
    assert result.error is not None
    assert result.error.node_id == "bad"


def test_fail_fast_cancels_the_rest() -> None:
    started = threading.Event()
    seen: dict[str, bool] = {}

    def slow(ctx: NodeContext) -> dict[str, Any]:
        started.set()
        return wait_for_cancel(ctx, seen)

    def fail_after_slow_started(ctx: NodeContext) -> None:
        assert started.wait(PATIENCE)
        raise RuntimeError("first failure")

    dag = build(
        Node("slow", [], py(slow)),
        Node("after_slow", ["slow"]),
        Node("bad", [], py(fail_after_slow_started)),
    )
    t0 = time.monotonic()
    result = dag.run(fail_fast=True)
    assert time.monotonic() - t0 < PATIENCE / 2
    assert result.status is RunStatus.FAILED
    status = {nid: res.status for nid, res in result.node_results.items()}
    assert status["bad"] is NodeStatus.FAILED
    assert status["slow"] is NodeStatus.CANCELLED
    assert status["after_slow"] is NodeStatus.CANCELLED
    assert eventually(lambda: seen == {"slow": True})


def test_retries_with_backoff_then_success() -> None:
    attempts: list[int] = []

    def flaky(ctx: NodeContext) -> dict[str, Any]:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")
        return {"ok": ctx.attempt}

    events: list[NodeEvent] = []
    dag = build(Node("f", [], py(flaky), retries=3, retry_backoff=RetryBackoff(0.01, 2.0, 1.0)))
    result = dag.run(on_event=events.append)
    assert result.ok
    assert attempts == [1, 2, 3]
    assert result.node_results["f"].attempts == 3
    assert result.outputs["f"] == {"ok": 3}
    retrying = [e for e in events if e.kind == "node_retrying"]
    assert [e.attempt for e in retrying] == [1, 2]
    assert [e.detail["delay"] for e in retrying if e.detail] == pytest.approx([0.01, 0.02])
    # The backoff really was waited for between attempts.
    starts = [e.time for e in events if e.kind == "node_started"]
    assert len(starts) == 3
    assert starts[2] - starts[1] >= 0.015


def test_retries_exhausted_fail_the_node() -> None:
    def always(ctx: NodeContext) -> None:
        raise KeyError("still broken")

    dag = build(Node("f", [], py(always), retries=2, retry_backoff=RetryBackoff(0.001, 1, 0.001)))
    result = dag.run()
    node = result.node_results["f"]
    assert node.status is NodeStatus.FAILED
    assert node.attempts == 3
    assert node.error is not None
    assert node.error.type == "KeyError"


def test_node_timeout_fails_the_node_and_sets_cancelled() -> None:
    seen: dict[str, bool] = {}
    dag = build(
        Node("slow", [], py(lambda ctx: wait_for_cancel(ctx, seen)), timeout=0.2),
        Node("after", ["slow"]),
    )
    t0 = time.monotonic()
    result = dag.run()
    assert time.monotonic() - t0 < PATIENCE / 2
    node = result.node_results["slow"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type == "NodeTimeout"
    assert result.node_results["after"].status is NodeStatus.SKIPPED
    # The abandoned attempt was told to stop.
    assert eventually(lambda: seen == {"slow": True})


def test_run_timeout_stops_the_run() -> None:
    dag = build(Node("slow", [], py(wait_for_cancel)), Node("after", ["slow"]))
    t0 = time.monotonic()
    result = dag.run(timeout=0.2)
    assert time.monotonic() - t0 < PATIENCE / 2
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.type == "RunTimeout"
    assert result.node_results["slow"].status is NodeStatus.CANCELLED
    assert result.node_results["after"].status is NodeStatus.CANCELLED
    with pytest.raises(RunTimeout) as info:
        result.raise_for_status()
    assert isinstance(info.value, RunFailed)


@pytest.mark.integration
def test_process_exits_cleanly_while_an_abandoned_python_node_winds_down() -> None:
    # The run ends (timeout) while the node is still inside Python; interpreter shutdown must
    # wait for it rather than abort.
    script = textwrap.dedent(
        """
        import time
        from dagengine import DAG, Node, PythonExecutor
        def slow(ctx):
            while not ctx.cancelled:
                time.sleep(0.005)
            time.sleep(0.2)
        dag = DAG("x")
        dag.add_node(Node("s", [], PythonExecutor(slow)))
        print(dag.run(timeout=0.1).status)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "failed"


def test_cancel_from_another_thread_sets_ctx_cancelled() -> None:
    started = threading.Event()
    seen: dict[str, bool] = {}

    def slow(ctx: NodeContext) -> dict[str, Any]:
        started.set()
        return wait_for_cancel(ctx, seen)

    dag = build(Node("slow", [], py(slow)), Node("after", ["slow"]))
    handle = dag.start()
    assert isinstance(handle, LocalRun)
    assert started.wait(PATIENCE)
    assert not handle.done
    threading.Thread(target=handle.cancel).start()
    result = handle.wait(timeout=PATIENCE)
    assert handle.done
    assert result.status is RunStatus.CANCELLED
    assert result.node_results["after"].status is NodeStatus.CANCELLED
    assert eventually(lambda: seen == {"slow": True})
    with pytest.raises(RunCancelled):
        result.raise_for_status()


def test_wait_with_timeout_raises_while_running() -> None:
    started = threading.Event()

    def slow(ctx: NodeContext) -> dict[str, Any]:
        started.set()
        return wait_for_cancel(ctx)

    handle = build(Node("slow", [], py(slow))).start()
    assert started.wait(PATIENCE)
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.05)
    handle.cancel()
    assert handle.wait(timeout=PATIENCE).status is RunStatus.CANCELLED


def test_keyboard_interrupt_cancels_the_run_and_propagates() -> None:
    seen: dict[str, bool] = {}

    def on_event(event: NodeEvent) -> None:
        if event.kind == "node_started" and event.node_id == "slow":
            raise KeyboardInterrupt

    dag = build(Node("slow", [], py(lambda ctx: wait_for_cancel(ctx, seen))))
    with pytest.raises(KeyboardInterrupt):
        dag.run(on_event=on_event)
    assert eventually(lambda: seen == {"slow": True})


def test_completed_nodes_are_not_run_again() -> None:
    calls: list[str] = []

    def record(ctx: NodeContext) -> dict[str, Any]:
        calls.append(ctx.node_id)
        return {"from": ctx.node_id, "parents": dict(ctx.results)}

    dag = build(Node("a", [], py(record)), Node("b", ["a"], py(record)))
    result = dag.run(completed={"a": {"v": 1}})
    assert result.ok
    assert calls == ["b"]
    assert result.outputs["b"] == {"from": "b", "parents": {"a": {"v": 1}}}
    assert result.node_results["a"].status is NodeStatus.SUCCEEDED
    assert result.outputs["a"] == {"v": 1}
    with pytest.raises(SpecError, match="not a node"):
        dag.run(completed={"zzz": {}})


# --- executors ----------------------------------------------------------------------------------


def test_async_def_node_in_sync_run() -> None:
    async def fetch(ctx: NodeContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"value": ctx.inputs["x"] * 2}

    result = build(Node("f", [], py(fetch))).run({"x": 21})
    assert result.outputs["f"] == {"value": 42}


def test_async_def_node_runs_on_the_callers_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def fetch(ctx: NodeContext) -> dict[str, Any]:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return {"async": True}

    async def main() -> tuple[Any, asyncio.AbstractEventLoop]:
        result = await build(Node("f", [], py(fetch)), Node("g", ["f"])).run_async()
        return result, asyncio.get_running_loop()

    result, loop = asyncio.run(main())
    assert result.ok
    assert result.outputs["f"] == {"async": True}
    assert loops == [loop]


def test_async_node_is_cancelled_with_the_run() -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def forever(ctx: NodeContext) -> None:
        started.set()
        try:
            await asyncio.sleep(PATIENCE)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handle = build(Node("f", [], py(forever))).start()
    assert started.wait(PATIENCE)
    handle.cancel()
    assert handle.wait(PATIENCE).status is RunStatus.CANCELLED
    assert cancelled.wait(PATIENCE)


def test_custom_executor_object() -> None:
    class Multiply:
        def __init__(self, by: int) -> None:
            self.by = by

        def execute(self, ctx: NodeContext) -> dict[str, Any]:
            return {"value": ctx.inputs["x"] * self.by}

    class AsyncAdd:
        async def execute(self, ctx: NodeContext) -> dict[str, Any]:
            return {"value": ctx.results["m"]["value"] + 1}

    dag = build(Node("m", [], Multiply(3)), Node("a", ["m"], AsyncAdd()))
    assert dag.nodes["m"].kind == "custom"
    assert dag.run({"x": 5}).outputs == {"m": {"value": 15}, "a": {"value": 16}}


def test_subworkflow_without_orchestrator_fails_clearly() -> None:
    dag = build(Node("child", [], SubWorkflow("child", "^1.4")), Node("after", ["child"]))
    result = dag.run()
    node = result.node_results["child"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type == "SubWorkflowError"
    assert (
        node.error.message == "sub-workflow node child needs an orchestrator to resolve child@^1.4"
    )


def test_subworkflow_runner_is_used() -> None:
    calls: list[tuple[str, str, str]] = []

    def runner(sub: SubWorkflow, ctx: NodeContext) -> dict[str, Any]:
        calls.append((sub.workflow_id, sub.version_range, ctx.node_id))
        return {"child_output": ctx.inputs["x"]}

    dag = build(Node("c", [], SubWorkflow("child")))
    result = dag.run({"x": 1}, subworkflow_runner=runner)
    assert result.outputs == {"c": {"child_output": 1}}
    assert calls == [("child", "*", "c")]


# --- events -------------------------------------------------------------------------------------


def test_events_are_delivered_to_the_callback_while_running() -> None:
    seen_kinds: list[tuple[str, str | None]] = []
    a_done_seen = threading.Event()

    def on_event(event: NodeEvent) -> None:
        seen_kinds.append((event.kind, event.node_id))
        if event.kind == "node_succeeded" and event.node_id == "a":
            a_done_seen.set()

    def b(ctx: NodeContext) -> dict[str, Any]:
        # Only proceeds if the caller received a's event while the run is still going.
        return {"saw_a": a_done_seen.wait(PATIENCE)}

    events: list[NodeEvent] = []

    def both(event: NodeEvent) -> None:
        events.append(event)
        on_event(event)

    result = build(Node("a"), Node("b", ["a"], py(b))).run(on_event=both)
    assert result.outputs["b"] == {"saw_a": True}
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert events[-1].detail is not None
    assert events[-1].detail["status"] == "succeeded"
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    for node in ("a", "b"):
        node_kinds = [e.kind for e in events if e.node_id == node]
        assert node_kinds == ["node_started", "node_succeeded"]


def test_failure_event_carries_the_error() -> None:
    def fail(ctx: NodeContext) -> None:
        raise ValueError("bad")

    events: list[NodeEvent] = []
    build(Node("f", [], py(fail)), Node("g", ["f"])).run(on_event=events.append)
    failed = next(e for e in events if e.kind == "node_failed")
    assert failed.node_id == "f"
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert any(e.kind == "node_skipped" and e.node_id == "g" for e in events)


def test_async_iteration_yields_events_while_running() -> None:
    a_done_seen = threading.Event()

    def b(ctx: NodeContext) -> dict[str, Any]:
        return {"saw_a": a_done_seen.wait(PATIENCE)}

    async def main() -> tuple[list[NodeEvent], Any]:
        dag = build(Node("a"), Node("b", ["a"], py(b)))
        handle = dag.start_async()
        events = []
        async for event in handle:
            events.append(event)
            if event.kind == "node_succeeded" and event.node_id == "a":
                a_done_seen.set()
        return events, await handle.wait_async()

    events, result = asyncio.run(main())
    assert result.outputs["b"] == {"saw_a": True}
    assert events[-1].kind == "run_finished"


def test_run_async_with_callback() -> None:
    events: list[NodeEvent] = []

    async def main() -> Any:
        return await build(Node("a"), Node("b", ["a"])).run_async(on_event=events.append)

    result = asyncio.run(main())
    assert result.ok
    assert [e.kind for e in events if e.node_id == "b"] == ["node_started", "node_succeeded"]


def test_sync_event_iterator_ends_with_the_run() -> None:
    handle = build(Node("a"), Node("b", ["a"])).start()
    kinds = [event.kind for event in handle.events()]
    assert handle.done
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert handle.wait().ok


def test_runs_of_one_dag_can_start_from_many_threads_at_once() -> None:
    """The native graph is shared by every run of a DAG: concurrent starts (an orchestrator's
    workers) must neither collide on it nor fail, including the very first ones."""
    dag = DAG()
    dag.add_node(Node("a", [], LuaExecutor("return {x = 1}")))
    dag.add_node(Node("b", ["a"], LuaExecutor("return {y = results.a.x + 1}")))
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            try:
                result = dag.start({}).wait(timeout=30)
                ok = result.status is RunStatus.SUCCEEDED and result.outputs["b"] == {"y": 2}
                problem = None if ok else str(result.error)
            except Exception as exc:
                problem = repr(exc)
            if problem is not None:
                with lock:
                    failures.append(problem)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []


# --- inputs must be JSON data ------------------------------------------------------------------


def nested(levels: int) -> list[Any]:
    """A list nested ``levels`` deep (``nested(1) == []``)."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


NOT_JSON_INPUTS: list[tuple[Any, str]] = [
    ({"a": "\udcff"}, r"inputs\.a: string is not valid UTF-8 \(lone surrogate \\udcff\)"),
    ({"\ud800x": 1}, r"inputs: key '\\ud800x' is not valid UTF-8 \(lone surrogate \\ud800\)"),
    ({"a": {"b c": ["\udcff"]}}, r"inputs\.a\['b c'\]\[0\]: string is not valid UTF-8"),
    ({"a": 2**63}, r"inputs\.a: integer 9223372036854775808 is out of range"),
    ({"a": [-(2**63) - 1]}, r"inputs\.a\[0\]: integer -9223372036854775809 is out of range"),
    ({"a": 10**1000}, r"inputs\.a: a 3322-bit integer is out of range"),
    ({"a": [-(10**1000)]}, r"inputs\.a\[0\]: a negative 3322-bit integer is out of range"),
    ({"a": float("nan")}, r"inputs\.a: nan is not a JSON number"),
    ({"a": {"b": float("-inf")}}, r"inputs\.a\.b: -inf is not a JSON number"),
    ({"a": 2.0**63}, r"inputs\.a: 9\.223372036854776e\+18 is out of range \(numbers must be"),
    ({"a": -1e300}, r"inputs\.a: -1e\+300 is out of range"),
    ({"a": {1: "x"}}, r"inputs\.a: keys must be strings, got int 1"),
    ({"a": {None: "x"}}, r"inputs\.a: keys must be strings, got NoneType None"),
    ({"a": object()}, r"inputs\.a: object is not JSON data"),
    ({"a": {1, 2}}, r"inputs\.a: set is not JSON data"),
    ({"a": b"bytes"}, r"inputs\.a: bytes is not JSON data"),
    # The inputs object is level 1: 64 levels in all are accepted, 65 are not.
    ({"a": nested(64)}, r"inputs\.a(\[0\]){63}: nested deeper than 64 levels"),
    ([("a", 1)], r"inputs: expected a mapping, got list"),
]


@pytest.mark.parametrize(("inputs", "pattern"), NOT_JSON_INPUTS)
@pytest.mark.parametrize("how", ["run", "start", "run_async"])
def test_inputs_that_are_not_json_data_raise_validation_error(
    inputs: Any, pattern: str, how: str
) -> None:
    calls: list[str] = []
    dag = DAG("w")
    dag.add_node(Node("a", [], py(lambda ctx: calls.append(ctx.run_id))))
    calls_by_how: dict[str, Any] = {
        "run": lambda: dag.run(inputs),
        "start": lambda: dag.start(inputs),
        "run_async": lambda: asyncio.run(dag.run_async(inputs)),
    }
    with pytest.raises(ValidationError, match=pattern):
        calls_by_how[how]()
    assert calls == []


def test_json_data_at_the_limits_runs() -> None:
    seen: list[Any] = []
    dag = DAG("w")
    dag.add_node(Node("a", [], py(lambda ctx: seen.append(dict(ctx.inputs)))))
    inputs = {
        "max": 2**63 - 1,
        "min": -(2**63),
        "deep": nested(63),
        "text": "ü€😀",
        "ü": (1, 2.5, None, True),
    }
    assert dag.run(inputs).ok
    assert seen[0]["max"] == 2**63 - 1
    assert seen[0]["min"] == -(2**63)
    assert seen[0]["ü"] == [1, 2.5, None, True]
