"""``DAG.run()`` drives the run on the calling thread and calls synchronous Python nodes there
(issue 20); what must not change because of it: async nodes, timeouts, concurrency of ready
branches, Ctrl-C, ``DAG.start``."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from dagengine import DAG, Node, NodeContext, PythonExecutor, RunStatus

# Generous upper bound for "this must happen"; tests wait on conditions, never on this.
PATIENCE = 10.0


def build(*nodes: Node, **kwargs: Any) -> DAG:
    dag = DAG("inline", **kwargs)
    dag.add_nodes(nodes)
    return dag


class Threads:
    """Records the thread each node ran on."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def node(self, ctx: NodeContext) -> dict[str, Any]:
        self.seen[ctx.node_id] = threading.get_ident()
        return {"n": len(ctx.results)}


def chain(n: int, fn: Any, **kwargs: Any) -> DAG:
    nodes = [Node("n0", [], PythonExecutor(fn), **kwargs)]
    nodes += [Node(f"n{i}", [f"n{i - 1}"], PythonExecutor(fn), **kwargs) for i in range(1, n)]
    return build(*nodes)


def test_run_calls_python_nodes_on_the_calling_thread() -> None:
    threads = Threads()
    result = chain(20, threads.node).run()
    assert result.ok, result.error
    assert set(threads.seen.values()) == {threading.get_ident()}
    assert result.outputs["n5"] == {"n": 1}


def test_start_still_calls_them_on_worker_threads() -> None:
    threads = Threads()
    result = chain(5, threads.node).start().wait(PATIENCE)
    assert result.ok, result.error
    assert threading.get_ident() not in threads.seen.values()


def test_async_nodes_and_nodes_with_a_timeout_run_on_worker_threads() -> None:
    seen: dict[str, int] = {}

    async def coro(ctx: NodeContext) -> dict[str, Any]:
        seen[ctx.node_id] = threading.get_ident()
        return {"async": True}

    def timed(ctx: NodeContext) -> None:
        seen[ctx.node_id] = threading.get_ident()

    dag = build(
        Node("a", [], PythonExecutor(coro)),
        Node("t", ["a"], PythonExecutor(timed), timeout=30),
    )
    result = dag.run()
    assert result.ok, result.error
    assert result.outputs["a"] == {"async": True}
    assert threading.get_ident() not in seen.values()


def test_a_run_timeout_still_abandons_a_blocked_node() -> None:
    release = threading.Event()

    def stuck(ctx: NodeContext) -> None:
        release.wait(PATIENCE)

    try:
        result = chain(2, stuck).run(timeout=0.2)
    finally:
        release.set()
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.type == "RunTimeout"


def test_a_blocked_node_does_not_keep_its_ready_siblings_waiting() -> None:
    # Three siblings ready at once, each waiting for the other two.
    barrier = threading.Barrier(3, timeout=PATIENCE)

    def meet(ctx: NodeContext) -> dict[str, Any]:
        barrier.wait()
        return {"met": True}

    dag = build(
        Node("root", [], PythonExecutor(lambda ctx: None)),
        *(Node(f"s{i}", ["root"], PythonExecutor(meet)) for i in range(3)),
    )
    result = dag.run()
    assert result.ok, result.error
    assert all(result.outputs[f"s{i}"] == {"met": True} for i in range(3))


def test_conditions_and_map_items_run_on_the_calling_thread() -> None:
    seen: set[int] = set()

    def when(ctx: NodeContext) -> bool:
        seen.add(threading.get_ident())
        return ctx.results["src"]["go"]

    def square(ctx: NodeContext) -> dict[str, Any]:
        seen.add(threading.get_ident())
        return {"sq": ctx.item * ctx.item}

    dag = build(
        Node("src", [], PythonExecutor(lambda ctx: {"go": True, "xs": [1, 2, 3]})),
        Node("sq", ["src"], PythonExecutor(square), when=when, map="results.src.xs"),
    )
    result = dag.run()
    assert result.ok, result.error
    assert result.outputs["sq"] == [{"sq": 1}, {"sq": 4}, {"sq": 9}]
    assert seen == {threading.get_ident()}


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_ctrl_c_during_a_run_cancels_it_and_is_raised() -> None:
    ran: list[str] = []
    interrupt = [True]

    def node(ctx: NodeContext) -> None:
        ran.append(ctx.node_id)
        if ctx.node_id == "n2" and interrupt.pop():  # the first run only
            # Ctrl-C arrives while n2 runs; Python raises it in the node, on this thread.
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(PATIENCE)

    dag = chain(6, node)
    with pytest.raises(KeyboardInterrupt):
        dag.run()
    assert ran == ["n0", "n1", "n2"]
    # The run ended (cancelled) before the interrupt was raised: the DAG runs again.
    del ran[:]
    interrupt.append(False)
    assert dag.run().ok
    assert len(ran) == 6


def test_a_keyboard_interrupt_out_of_a_node_cancels_the_run_and_is_raised() -> None:
    ran: list[str] = []

    def node(ctx: NodeContext) -> None:
        ran.append(ctx.node_id)
        if ctx.node_id == "n1":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chain(5, node).run()
    assert ran == ["n0", "n1"]


def test_a_signal_handler_that_does_not_raise_leaves_the_run_going() -> None:
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:

        def node(ctx: NodeContext) -> None:
            if ctx.node_id == "n1":
                os.kill(os.getpid(), signal.SIGINT)

        result = chain(4, node).run()
    finally:
        signal.signal(signal.SIGINT, old)
    assert result.ok, result.error
    assert caught == [signal.SIGINT]
