"""``ctx.results`` (issue 20): the core hands a node its parents' outputs as they are and they
become a dict when the node first reads them; each call's dict is its own, whichever way the
node runs (on the calling thread with ``DAG.run()``, on the core's threads with a timeout or
``DAG.start``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from dagengine import DAG, Node, NodeContext, PythonExecutor, RunResult

PATIENCE = 10.0

WAYS: dict[str, tuple[dict[str, Any], Callable[[DAG], RunResult]]] = {
    "inline": ({}, lambda dag: dag.run()),
    "timeout": ({"timeout": "30s"}, lambda dag: dag.run()),
    "start": ({}, lambda dag: dag.start().wait(PATIENCE)),
}


def source(ctx: NodeContext) -> dict[str, Any]:
    return {"rows": [1, 2, 3], "meta": {"name": "src"}}


@pytest.mark.parametrize("way", WAYS)
def test_a_node_changing_its_results_changes_nothing_a_sibling_or_the_run_sees(way: str) -> None:
    extra, run = WAYS[way]
    seen: dict[str, Any] = {}

    def changer(ctx: NodeContext) -> dict[str, Any]:
        results = ctx.results
        results["src"]["rows"].append(4)
        results["src"]["meta"]["name"] = "changed"
        results["src"]["new"] = True
        results["other"] = {}
        # The same dict on every read: what the node changed, it sees.
        assert ctx.results is results
        assert ctx.results["src"]["rows"] == [1, 2, 3, 4]
        return {"n": len(ctx.results["src"]["rows"])}

    def reader(ctx: NodeContext) -> dict[str, Any]:
        seen[ctx.node_id] = json.loads(json.dumps(ctx.results))
        return {"n": len(ctx.results["src"]["rows"])}

    dag = DAG("results")
    dag.add_node(Node("src", [], PythonExecutor(source), **extra))
    dag.add_node(Node("changer", ["src"], PythonExecutor(changer), **extra))
    dag.add_node(Node("reader", ["src", "changer"], PythonExecutor(reader), **extra))
    dag.add_node(Node("sibling", ["src"], PythonExecutor(reader), **extra))
    result = run(dag)
    assert result.ok, result.error
    original = {"rows": [1, 2, 3], "meta": {"name": "src"}}
    assert seen["reader"] == {"src": original, "changer": {"n": 4}}
    assert seen["sibling"] == {"src": original}
    assert result.outputs["src"] == original
    assert result.outputs["reader"] == result.outputs["sibling"] == {"n": 3}


@pytest.mark.parametrize("way", WAYS)
def test_results_is_a_plain_dict_of_the_parents(way: str) -> None:
    extra, run = WAYS[way]
    seen: list[Any] = []

    def node(ctx: NodeContext) -> None:
        seen.append(ctx.results)

    dag = DAG("plain")
    dag.add_node(Node("a", [], PythonExecutor(lambda ctx: {"x": 1}), **extra))
    dag.add_node(Node("b", [], PythonExecutor(lambda ctx: None), **extra))
    dag.add_node(Node("root", [], PythonExecutor(node), **extra))
    dag.add_node(Node("c", ["a", "b"], PythonExecutor(node), **extra))
    assert run(dag).ok
    assert all(type(r) is dict for r in seen)
    assert sorted(seen, key=len) == [{}, {"a": {"x": 1}, "b": {}}]


@pytest.mark.parametrize("way", WAYS)
def test_an_item_changing_its_results_changes_nothing_another_item_sees(way: str) -> None:
    extra, run = WAYS[way]
    seen: dict[int, Any] = {}

    def item(ctx: NodeContext) -> dict[str, Any]:
        assert ctx.index is not None
        seen[ctx.index] = dict(ctx.results)
        ctx.results["src"] = "replaced"
        ctx.results["extra"] = ctx.index
        return {"i": ctx.index}

    dag = DAG("items")
    dag.add_node(Node("src", [], PythonExecutor(source), **extra))
    dag.add_node(Node("each", ["src"], PythonExecutor(item), map="results.src.rows", **extra))
    result = run(dag)
    assert result.ok, result.error
    assert result.outputs["each"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert seen == {i: {"src": {"rows": [1, 2, 3], "meta": {"name": "src"}}} for i in range(3)}


def test_a_context_made_by_hand_keeps_the_results_it_was_given() -> None:
    results = {"a": {"x": 1}}
    ctx = NodeContext({}, results, "n", "run", 1)
    assert ctx.results is results
    ctx.results = {"b": {}}
    assert ctx.results == {"b": {}}
