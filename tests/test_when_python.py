"""A Python ``when`` (issue 19): on a run driven on the calling thread (``DAG.run()``) the
condition and its node share one call and one context; what must hold whichever way the
node runs (there, or on the core's threads: a node with a timeout, ``DAG.start``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dagengine import DAG, Node, NodeContext, PythonExecutor, RunResult, RunStatus

PATIENCE = 10.0

#: How a run is made: on the calling thread, on the core's threads because the node has a
#: timeout, and through ``DAG.start`` (worker threads, with events).
WAYS: dict[str, tuple[dict[str, Any], Callable[[DAG], RunResult]]] = {
    "inline": ({}, lambda dag: dag.run({"limit": 1})),
    "timeout": ({"timeout": "30s"}, lambda dag: dag.run({"limit": 1})),
    "start": ({}, lambda dag: dag.start({"limit": 1}).wait(PATIENCE)),
}


def states(result: RunResult) -> dict[str, tuple[str, str | None]]:
    return {k: (v.status.value, v.skip_reason) for k, v in result.node_results.items()}


def gated(
    node: Callable[[NodeContext], Any], when: Callable[[NodeContext], Any], **kwargs: Any
) -> DAG:
    """``src`` -> ``gated`` (``node`` under ``when``) -> ``after``."""
    dag = DAG("when-python")
    dag.add_node(Node("src", [], PythonExecutor(lambda ctx: {"rows": [1, 2, 3]})))
    dag.add_node(Node("gated", ["src"], PythonExecutor(node), when=when, **kwargs))
    dag.add_node(Node("after", ["gated"], PythonExecutor(lambda ctx: {"ok": True})))
    return dag


@pytest.mark.parametrize("way", WAYS)
def test_the_condition_sees_what_the_node_sees(way: str) -> None:
    extra, run = WAYS[way]
    seen: list[tuple[str, NodeContext, dict[str, Any]]] = []

    def when(ctx: NodeContext) -> bool:
        seen.append(("when", ctx, {k: dict(v) for k, v in ctx.results.items()}))
        return len(ctx.results["src"]["rows"]) > int(ctx.inputs["limit"])

    def node(ctx: NodeContext) -> dict[str, int]:
        seen.append(("node", ctx, {k: dict(v) for k, v in ctx.results.items()}))
        return {"n": len(ctx.results["src"]["rows"])}

    result = run(gated(node, when, **extra))
    assert result.ok, result.error
    assert result.outputs["gated"] == {"n": 3}
    assert [what for what, _, _ in seen] == ["when", "node"]
    (_, cond, cond_results), (_, ctx, node_results) = seen
    assert cond_results == node_results == {"src": {"rows": [1, 2, 3]}}
    for field in ("node_id", "run_id", "attempt", "index", "item"):
        assert getattr(cond, field) == getattr(ctx, field), field
    assert dict(cond.inputs) == dict(ctx.inputs) == {"limit": 1}
    assert cond.attempt == 1


@pytest.mark.parametrize("way", WAYS)
def test_a_false_condition_skips_the_node_without_calling_it(way: str) -> None:
    extra, run = WAYS[way]
    called: list[str] = []
    result = run(gated(lambda ctx: called.append("node"), lambda ctx: False, **extra))
    assert result.ok, result.error
    assert called == []
    assert states(result) == {
        "src": ("succeeded", None),
        "gated": ("skipped", "condition"),
        "after": ("skipped", "trigger_rule"),
    }
    assert result.node_results["gated"].attempts == 0


def test_a_false_condition_is_a_node_skipped_event_with_its_reason() -> None:
    dag = gated(lambda ctx: None, lambda ctx: False)
    events = [e for e in dag.start().events() if e.node_id == "gated"]
    assert [(e.kind, (e.detail or {}).get("reason")) for e in events] == [
        ("node_skipped", "condition")
    ]


@pytest.mark.parametrize("way", WAYS)
def test_a_condition_that_raises_fails_its_node_without_a_retry(way: str) -> None:
    extra, run = WAYS[way]
    calls: list[str] = []

    def when(ctx: NodeContext) -> bool:
        calls.append("when")
        raise LookupError("no such partition")

    def node(ctx: NodeContext) -> None:
        calls.append("node")

    result = run(gated(node, when, retries=2, retry_backoff=None, **extra))
    assert result.status is RunStatus.FAILED
    assert calls == ["when"]
    error = result.node_results["gated"].error
    assert error is not None
    assert error.type == "LookupError"
    assert "no such partition" in error.message
    assert result.node_results["gated"].attempts == 1
    assert states(result)["after"] == ("skipped", "upstream_failed")


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("value", [None, 1, "yes", [True]])
def test_a_condition_that_is_not_a_bool_fails_naming_its_node(way: str, value: object) -> None:
    extra, run = WAYS[way]
    called: list[str] = []
    result = run(gated(lambda ctx: called.append("node"), lambda ctx: value, retries=1, **extra))
    assert result.status is RunStatus.FAILED
    assert called == []
    error = result.node_results["gated"].error
    assert error is not None
    assert error.type == "TypeError"
    want = f"node 'gated': when must return a bool, got {type(value).__name__} {value!r}"
    assert want in error.message
    assert result.node_results["gated"].attempts == 1


@pytest.mark.parametrize("way", WAYS)
def test_retries_do_not_check_the_condition_again(way: str) -> None:
    extra, run = WAYS[way]
    calls: list[tuple[str, int]] = []

    def when(ctx: NodeContext) -> bool:
        calls.append(("when", ctx.attempt))
        return True

    def flaky(ctx: NodeContext) -> dict[str, int]:
        calls.append(("node", ctx.attempt))
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return {"attempt": ctx.attempt}

    result = run(gated(flaky, when, retries=2, retry_backoff=None, **extra))
    assert result.ok, result.error
    assert result.outputs["gated"] == {"attempt": 3}
    assert calls == [("when", 1), ("node", 1), ("node", 2), ("node", 3)]


def test_a_node_failure_after_its_condition_held_is_retried_as_its_own() -> None:
    def node(ctx: NodeContext) -> None:
        raise ValueError("node failed")

    result = gated(node, lambda ctx: True, retries=1, retry_backoff=None).run()
    error = result.node_results["gated"].error
    assert error is not None
    assert error.type == "ValueError"
    assert result.node_results["gated"].attempts == 2


def test_a_node_that_returns_false_is_not_taken_for_a_false_condition() -> None:
    result = gated(lambda ctx: False, lambda ctx: True).run()
    assert result.status is RunStatus.FAILED
    error = result.node_results["gated"].error
    assert error is not None
    assert error.type == "TypeError"
    assert "returned bool" in error.message


def test_a_node_that_returns_an_exception_is_not_taken_for_a_failed_condition() -> None:
    result = gated(lambda ctx: ValueError("returned"), lambda ctx: True, retries=1).run()
    error = result.node_results["gated"].error
    assert error is not None
    assert error.type == "TypeError"
    assert "returned ValueError" in error.message


def test_a_keyboard_interrupt_out_of_a_condition_cancels_the_run_and_is_raised() -> None:
    called: list[str] = []

    def when(ctx: NodeContext) -> bool:
        raise KeyboardInterrupt

    dag = gated(lambda ctx: called.append("node"), when)
    with pytest.raises(KeyboardInterrupt):
        dag.run()
    assert called == []
