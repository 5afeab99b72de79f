"""In-process runs of workflows the core runs without Python (Lua and no-op nodes): started
where they are launched (:meth:`LocalBackend.launch`), a short one ended and concluded there
with no thread hand-off, a longer one followed by a pool thread; the same records, events
(live for a long run), timeouts and cancellation as the runs a thread waits on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dagengine import DAG, LuaExecutor, Node, PythonExecutor
from dagengine.orchestrator import Orchestrator, RunHandle, backends
from dagengine.orchestrator.backends import native_only
from dagengine.orchestrator.monitor import Monitor
from dagengine.results import RunStatus

SPIN = "local n = 0 for i = 1, 2000000 do n = n + i end log('sum', n) return {n = n}"


def lua3() -> DAG:
    dag = DAG()
    dag.lua("a", "return {x = (inputs.n or 1) * 2}")
    dag.lua("b", "log('b says', results.a.x) return {y = results.a.x + 1}", ["a"])
    dag.lua("c", "return {z = results.b.y}", ["b"])
    return dag


def start(
    orch: Orchestrator,
    workflow_id: str,
    inputs: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> RunHandle:
    handle = orch.execute_workflow(workflow_id, inputs, wait=False, timeout=timeout)
    assert isinstance(handle, RunHandle)
    return handle


def node_events(orch: Orchestrator, run_id: str) -> list[tuple[str, str | None]]:
    return [
        (event.type, event.node_id)
        for event in orch.events.store.events(run_id=run_id)
        if event.type.startswith("node.")
    ]


def test_which_dags_the_core_runs_without_python() -> None:
    assert native_only(lua3())
    noop = DAG()
    noop.add_node(Node("n", []))
    assert native_only(noop)
    python = lua3()
    python.add_node(Node("p", ["c"], PythonExecutor(lambda ctx: {})))
    assert not native_only(python)
    when = DAG()
    when.add_node(Node("w", [], LuaExecutor("return {}"), when=lambda ctx: True))
    assert not native_only(when)
    lua_when = DAG()
    lua_when.add_node(Node("w", [], LuaExecutor("return {}"), when="inputs.go == true"))
    assert native_only(lua_when)
    cached = DAG()
    cached.lua("c", "return {}", cache=True)
    assert not native_only(cached)


def test_a_short_lua_run_ends_where_it_is_launched_with_its_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A budget no 3-node Lua run can spend, however loaded the machine: it ends inline.
    monkeypatch.setattr(backends, "INLINE_BUDGET", 30.0)
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("lua3", "1.0.0", lua3())
        handle = start(orch, "lua3", {"n": 4})
        result = handle.result(timeout=30)
        assert result.status is RunStatus.SUCCEEDED, result.error
        assert dict(result.outputs["c"]) == {"z": 9}
        # No thread of the run pool was needed for it.
        assert orch._pool._threads == []
        info = orch.get_run(handle.run_id)
        assert info.status == "succeeded"
        assert orch.store.node_outputs(handle.run_id)["b"] == {"y": 9}
        kinds = node_events(orch, handle.run_id)
        for node in "abc":
            assert ("node.started", node) in kinds
            assert ("node.succeeded", node) in kinds
        logs = [
            event.data
            for event in orch.events.store.events(run_id=handle.run_id, types=["node.log"])
        ]
        assert [line["message"] for line in logs] == ["b says\t8"]
        types = [e.type for e in orch.events.store.events(run_id=handle.run_id)]
        assert types.index("run.started") < types.index("node.started")
        assert types[-1] == "run.completed"


def test_a_lua_run_submitted_from_an_event_loop_runs_on_a_pool_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop serves every request: a run's bookkeeping stays off it."""
    monkeypatch.setattr(backends, "INLINE_BUDGET", 30.0)
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("lua3", "1.0.0", lua3())

        async def submit() -> RunHandle:
            return start(orch, "lua3", {"n": 2})

        handle = asyncio.run(submit())
        assert dict(handle.result(timeout=30).outputs["c"]) == {"z": 5}
        assert orch._pool._threads
        assert dict(start(orch, "lua3", {"n": 3}).result(timeout=30).outputs["c"]) == {"z": 7}


@pytest.mark.parametrize("budget", [0.0, backends.INLINE_BUDGET])
def test_a_lua_run_past_the_budget_goes_on_and_ends_once(
    budget: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "INLINE_BUDGET", budget)
    dag = DAG()
    dag.lua("spin", SPIN)
    dag.lua("after", "return {seen = results.spin.n}", ["spin"])
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("spin", "1.0.0", dag)
        handles = [start(orch, "spin") for _ in range(3)]
        total = sum(range(1, 2_000_001))
        for handle in handles:
            result = handle.result(timeout=60)
            assert result.status is RunStatus.SUCCEEDED, result.error
            assert dict(result.outputs["after"]) == {"seen": total}
            kinds = node_events(orch, handle.run_id)
            # Ran again on the pool after the budget, but reported once.
            assert kinds.count(("node.started", "spin")) == 1
            assert kinds.count(("node.log", "spin")) == 1
            assert kinds.count(("node.succeeded", "after")) == 1
        assert orch._pool._threads  # (followed there)
        assert orch.engines()["local"].active == 0


def test_a_long_lua_nodes_start_is_seen_while_it_runs() -> None:
    dag = DAG()
    dag.lua("forever", "while true do end return {}")
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("forever", "1.0.0", dag)
        handle = start(orch, "forever")
        monitor = Monitor(orch)
        sub = monitor.subscribe(run_id=handle.run_id, types=["node.started"], after=0)
        try:
            event = sub.get(timeout=10)
        finally:
            monitor.close()
        assert event is not None
        assert event.node_id == "forever"
        assert not handle.done
        assert handle.cancel()
        assert handle.result(timeout=30).status is RunStatus.CANCELLED


def test_a_long_lua_run_is_cancelled_and_a_run_timeout_fails_it() -> None:
    dag = DAG()
    dag.lua("forever", "while true do end return {}")
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("forever", "1.0.0", dag)
        handle = start(orch, "forever")
        deadline = time.monotonic() + 10
        while orch.get_run(handle.run_id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert handle.cancel()
        assert handle.result(timeout=30).status is RunStatus.CANCELLED
        assert orch.get_run(handle.run_id).status == "cancelled"
        timed = start(orch, "forever", timeout=0.2)
        result = timed.result(timeout=30)
        assert result.status is RunStatus.FAILED
        assert result.error is not None
        assert "timed out" in result.error.message


def test_many_lua_runs_at_once_all_end_once() -> None:
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("lua3", "1.0.0", lua3())
        handles = []
        lock = threading.Lock()

        def submit(count: int) -> None:
            for i in range(count):
                handle = start(orch, "lua3", {"n": i})
                with lock:
                    handles.append((i, handle))

        threads = [threading.Thread(target=submit, args=(100,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(handles) == 400
        for i, handle in handles:
            assert dict(handle.result(timeout=60).outputs["c"]) == {"z": 2 * i + 1}
        assert orch.get_run(handles[-1][1].run_id).status == "succeeded"


def test_an_inline_start_has_a_short_run_ended_when_it_returns() -> None:
    dag = lua3()._native()
    refs = [dag.start({"n": i}, f"r{i}", lambda *a: None, inline_budget=0.05) for i in range(3)]
    # (a 3-node Lua run takes tens of microseconds: within 50 ms, even on a loaded machine)
    assert all(ref.done() for ref in refs)
    for i, ref in enumerate(refs):
        assert dict(ref.result()["outputs"]["c"]) == {"z": 2 * i + 1}
        kinds = [event[1] for event in ref.next_events(0.0)]
        assert kinds[0] == "run_started"
        assert kinds[-1] == "run_finished"
    long = dag.start({"n": 1}, "long", lambda *a: None, inline_budget=0.0)
    assert long.wait(30)
    assert dict(long.result()["outputs"]["c"]) == {"z": 3}
    with pytest.raises(ValueError, match="inline_budget"):
        dag.start({}, "bad", lambda *a: None, inline_budget=-1.0)


def test_lua_runs_in_flight_are_reported_at_the_interpreters_exit(tmp_path: Path) -> None:
    """As in-process runs on threads are: a script that never stops its orchestrator still
    has its Lua runs carried to their end and recorded."""
    db = tmp_path / "state.db"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import atexit
            from dagengine import DAG
            from dagengine.orchestrator import Orchestrator

            dag = DAG()
            dag.lua("spin", {SPIN!r})
            orch = Orchestrator(store={str(db)!r})
            orch.register_workflow("w", "1.0.0", dag)
            # (runs after the runs in flight were waited for: commits their ends)
            atexit.register(orch.store.flush)
            print(orch.execute_workflow("w", wait=False).run_id)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    run_id = done.stdout.decode().strip()
    with Orchestrator(store=str(db), recover=False) as orch:
        assert orch.get_run(run_id).status == "succeeded"
