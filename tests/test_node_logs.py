"""Capturing a node attempt's ``logging`` records and ``print`` output (dagengine.node_logs)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from dagengine import DAG, Node, NodeContext, NodeEvent, PythonExecutor, RetryBackoff
from dagengine.node_logs import (
    TRUNCATED_PREFIX,
    NodeLogBuffer,
    capture,
    captured,
    current_buffer,
)
from processes import wait_for

log = logging.getLogger("tests.node_logs")


@pytest.fixture(autouse=True)
def _debug_level() -> None:
    log.setLevel(logging.DEBUG)


def _pairs(buffer: NodeLogBuffer) -> list[tuple[str, str]]:
    return [(line.level, line.message) for line in buffer.lines]


def test_sync_captures_print_and_logging_with_levels(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = NodeLogBuffer()
    with capture(buffer):
        print("hello", "world")
        print("to stderr", file=sys.stderr)
        log.debug("d %d", 1)
        log.info("i")
        log.warning("w")
        log.error("e")
        print("no newline", end="")
    assert _pairs(buffer) == [
        ("INFO", "hello world"),
        ("ERROR", "to stderr"),
        ("DEBUG", "d 1"),
        ("INFO", "i"),
        ("WARNING", "w"),
        ("ERROR", "e"),
        ("INFO", "no newline"),
    ]
    assert [line.source for line in buffer.lines][:2] == ["stdout", "stderr"]
    # Captured print output does not also reach the process's stdout.
    assert "hello world" not in capsys.readouterr().out
    assert current_buffer() is None


def test_outside_capture_nothing_changes(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = NodeLogBuffer()
    with capture(buffer):
        pass
    print("after")
    log.warning("after")
    assert buffer.lines == []
    assert capsys.readouterr().out == "after\n"


def test_exception_text_is_kept() -> None:
    buffer = NodeLogBuffer()
    with capture(buffer):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    [line] = buffer.lines
    assert line.level == "ERROR"
    assert line.message.startswith("failed\nTraceback")
    assert "ValueError: boom" in line.message


def test_async_tasks_each_capture_their_own() -> None:
    async def node(name: str, buffer: NodeLogBuffer) -> None:
        with capture(buffer):
            for i in range(3):
                print(f"{name} {i}")
                log.info("%s log %d", name, i)
                await asyncio.sleep(0)

    async def main() -> tuple[NodeLogBuffer, NodeLogBuffer]:
        a, b = NodeLogBuffer(), NodeLogBuffer()
        await asyncio.gather(node("a", a), node("b", b))
        return a, b

    a, b = asyncio.run(main())
    assert [m for _, m in _pairs(a)] == ["a 0", "a log 0", "a 1", "a log 1", "a 2", "a log 2"]
    assert [m for _, m in _pairs(b)] == ["b 0", "b log 0", "b 1", "b log 1", "b 2", "b log 2"]


def test_captured_runs_a_coroutine_on_another_loop_with_the_buffer() -> None:
    buffer = NodeLogBuffer()

    async def node() -> int:
        log.warning("from the loop thread")
        return 7

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        future = asyncio.run_coroutine_threadsafe(captured(node(), buffer), loop)
        assert future.result(timeout=5) == 7
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert _pairs(buffer) == [("WARNING", "from the loop thread")]


def test_threads_that_copy_the_context_are_captured(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = NodeLogBuffer()

    def work(i: int) -> None:
        print(f"worker {i}")

    with capture(buffer):
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(work, 1))
        t.start()
        t.join()
        asyncio.run(asyncio.to_thread(work, 2))
        # A plain thread starts with an empty context: its output is not the node's.
        plain = threading.Thread(target=work, args=(3,))
        plain.start()
        plain.join()
    assert [m for _, m in _pairs(buffer)] == ["worker 1", "worker 2"]
    assert "worker 3" in capsys.readouterr().out


def test_concurrent_nodes_on_threads_do_not_leak() -> None:
    def node(name: str) -> NodeLogBuffer:
        buffer = NodeLogBuffer()
        with capture(buffer):
            for i in range(200):
                print(name, i)
                log.info("%s %d", name, i)
        return buffer

    names = [f"n{i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        buffers = list(pool.map(node, names))
    for name, buffer in zip(names, buffers, strict=True):
        assert len(buffer.lines) == 400
        assert all(line.message.split(" ")[0] == name for line in buffer.lines)


def test_bound_truncates_with_one_marker() -> None:
    buffer = NodeLogBuffer(limit=10)
    with capture(buffer):
        print("12345")
        print("67890")
        print("x")
        log.error("dropped")
    assert [m for _, m in _pairs(buffer)][:2] == ["12345", "67890"]
    assert len(buffer.lines) == 3
    marker = buffer.lines[2]
    assert marker.level == "WARNING"
    assert marker.message.startswith(TRUNCATED_PREFIX)
    assert "10 bytes" in marker.message
    assert buffer.truncated
    assert buffer.size == 10


def test_bound_counts_utf8_bytes() -> None:
    buffer = NodeLogBuffer(limit=4)
    buffer.add("INFO", "éé")  # 4 bytes: fits
    buffer.add("INFO", "é")
    assert next(line.message for line in buffer.lines) == "éé"
    assert buffer.lines[1].message.startswith(TRUNCATED_PREFIX)


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="node log limit must be >= 0 bytes, got -1"):
        NodeLogBuffer(limit=-1)


def test_bad_log_format_does_not_fail_the_node() -> None:
    buffer = NodeLogBuffer()
    quiet = logging.getLogger("tests.node_logs.quiet")
    quiet.propagate = False  # no handler formats it: only the capture does
    quiet.setLevel(logging.INFO)
    with capture(buffer):
        quiet.info("%d items", "many")
    assert buffer.lines[0].level == "INFO"
    assert "unformattable" in buffer.lines[0].message


# --- a run's Python nodes: captured lines become node_log events ---------------------------


def _node_logs(events: list[NodeEvent]) -> list[tuple[str | None, int, str, str]]:
    return [
        (e.node_id, e.attempt, (e.detail or {})["level"], (e.detail or {})["message"])
        for e in events
        if e.kind == "node_log"
    ]


def _sync_node(ctx: NodeContext) -> dict[str, int]:
    print("sync print")
    log.warning("sync warning %s", ctx.node_id)
    ctx2 = contextvars.copy_context()
    t = threading.Thread(target=ctx2.run, args=(print, "from a thread"))
    t.start()
    t.join()
    return {"v": 1}


async def _async_node(ctx: NodeContext) -> dict[str, int]:
    await asyncio.sleep(0)
    log.info("async info")
    await asyncio.to_thread(print, "to_thread print")
    return {"v": 2}


def test_python_nodes_lines_are_node_log_events_before_their_end() -> None:
    dag = DAG()
    dag.add_node(Node("s", executor=PythonExecutor(_sync_node)))
    dag.add_node(Node("a", executor=PythonExecutor(_async_node), deps=("s",)))
    events: list[NodeEvent] = []
    result = dag.run(on_event=events.append)
    assert result.ok
    assert _node_logs(events) == [
        ("s", 1, "INFO", "sync print"),
        ("s", 1, "WARNING", "sync warning s"),
        ("s", 1, "INFO", "from a thread"),
        ("a", 1, "INFO", "async info"),
        ("a", 1, "INFO", "to_thread print"),
    ]
    kinds = [(e.kind, e.node_id) for e in events]
    assert kinds.index(("node_log", "s")) > kinds.index(("node_started", "s"))
    last_s_line = max(i for i, k in enumerate(kinds) if k == ("node_log", "s"))
    assert last_s_line < kinds.index(("node_succeeded", "s"))


def test_run_async_nodes_on_the_callers_loop_are_captured() -> None:
    dag = DAG()
    dag.add_node(Node("a", executor=PythonExecutor(_async_node)))
    events: list[NodeEvent] = []
    result = asyncio.run(dag.run_async(on_event=events.append))
    assert result.ok
    assert [m for *_, m in _node_logs(events)] == ["async info", "to_thread print"]


def test_each_attempt_keeps_its_lines_and_failures_keep_theirs() -> None:
    def flaky(ctx: NodeContext) -> None:
        print(f"attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")

    dag = DAG()
    dag.add_node(
        Node(
            "f", executor=PythonExecutor(flaky), retries=1, retry_backoff=RetryBackoff(initial=0.0)
        )
    )
    events: list[NodeEvent] = []
    assert dag.run(on_event=events.append).ok
    assert _node_logs(events) == [("f", 1, "INFO", "attempt 1"), ("f", 2, "INFO", "attempt 2")]


def test_parallel_nodes_do_not_see_each_others_lines() -> None:
    def chatty(ctx: NodeContext) -> None:
        for i in range(50):
            print(ctx.node_id, i)
            log.info("%s %d", ctx.node_id, i)

    dag = DAG()
    for i in range(16):
        dag.add_node(Node(f"n{i}", executor=PythonExecutor(chatty)))
    events: list[NodeEvent] = []
    assert dag.run(on_event=events.append, max_parallel=16).ok
    lines = _node_logs(events)
    assert len(lines) == 16 * 100
    assert all(message.split(" ")[0] == node for node, _, _, message in lines)


def test_without_events_nothing_is_captured(capsys: pytest.CaptureFixture[str]) -> None:
    dag = DAG()
    dag.add_node(Node("p", executor=PythonExecutor(lambda ctx: print("plain"))))
    assert dag.run().ok
    assert "plain" in capsys.readouterr().out


def test_a_running_nodes_lines_arrive_while_it_runs() -> None:
    gate = threading.Event()

    def waits(ctx: NodeContext) -> None:
        print("before the gate")
        log.warning("still before")
        # Bounded, so a broken delivery fails the test instead of hanging it.
        gate.wait(60)
        print("after the gate")

    dag = DAG()
    dag.add_node(Node("w", executor=PythonExecutor(waits)))
    handle = dag.start()
    seen: list[NodeEvent] = []

    def both_lines_seen() -> bool:
        seen.extend(handle.poll_events(0.05))
        return len(_node_logs(seen)) == 2

    try:
        wait_for(both_lines_seen, "the lines of a node still running")
        assert not handle.done
        assert not gate.is_set()
    finally:
        gate.set()
    seen.extend(handle.events())
    assert handle.wait().ok
    assert _node_logs(seen) == [
        ("w", 1, "INFO", "before the gate"),
        ("w", 1, "WARNING", "still before"),
        ("w", 1, "INFO", "after the gate"),
    ]
    kinds = [e.kind for e in seen if e.node_id == "w"]
    assert kinds == ["node_started", "node_log", "node_log", "node_log", "node_succeeded"]
