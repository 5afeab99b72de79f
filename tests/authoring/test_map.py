"""Dynamic fan-out (`map`): decorated workflows (``task.map``), the explicit style
(``Node(map=...)``, ``dag.task(map=...)``, ``dag.lua(map=...)``), specs, bad input, a resumed
run's completed items, and the same workflows on an engine process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagengine as de
import map_flows
import pytest
from dagengine import (
    DAG,
    EngineClient,
    LuaExecutor,
    Node,
    NodeContext,
    NodeEvent,
    Orchestrator,
    PythonExecutor,
    RunStatus,
    SpecError,
    SubWorkflow,
)


def _events(dag: DAG, inputs: dict[str, Any] | None = None) -> tuple[Any, list[NodeEvent]]:
    run = dag.start(inputs or {})
    events = list(run.events())
    return run.result(), events


# --- decorated workflows ----------------------------------------------------------------------


def test_the_issues_example_runs_one_square_per_row() -> None:
    wf = map_flows.numbers
    node = wf.nodes["square"]
    assert node.map == "results.extract.rows"
    assert node.deps == ("extract",)
    result = wf.run({"day": "2026-12-06"})
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["square"] == [{"sq": 1}, {"sq": 4}, {"sq": 9}]
    assert wf.output_of(result) == {"sum": 14}
    # Items are not nodes of the result; the mapped node's output holds them.
    assert set(result.node_results) == {"extract", "square", "total"}


def test_events_say_node_mapped_and_name_each_item() -> None:
    result, events = _events(map_flows.numbers, {"day": "d"})
    assert result.status is RunStatus.SUCCEEDED
    mapped = [(e.node_id, e.detail) for e in events if e.kind == "node_mapped"]
    assert mapped == [("square", {"count": 3})]
    done = [e.node_id for e in events if e.kind == "node_succeeded"]
    assert sorted(n for n in done if n and n.startswith("square[")) == [
        "square[0]",
        "square[1]",
        "square[2]",
    ]
    assert done.index("square") > max(done.index(f"square[{i}]") for i in range(3))


def test_a_map_over_an_input_with_more_arguments() -> None:
    wf = map_flows.scaled
    assert wf.nodes["scale"].map == "inputs.items"
    assert wf.nodes["scale"].deps == ()
    assert wf.run({"items": [1, 2, 3], "factor": 10}).outputs["total"] == {"sum": 60}
    assert wf.run({"items": []}).outputs["total"] == {"sum": 0}


def test_allow_partial_and_max_parallel_come_from_the_task() -> None:
    wf = map_flows.partial
    node = wf.nodes["picky"]
    assert (node.allow_partial, node.max_parallel) == (True, 2)
    result = wf.run()
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["picky"] == [{"sq": 1}, None, {"sq": 3}]
    assert result.outputs["survivors"] == {"kept": [1, 3]}


def test_map_outside_a_workflow_just_calls_the_function() -> None:
    assert map_flows.square.map([2, 3]) == [{"sq": 4}, {"sq": 9}]


def test_map_takes_a_reference_or_a_list() -> None:
    with pytest.raises(TypeError, match="task square: map takes a reference to a list"):

        @de.workflow
        def bad() -> Any:
            return map_flows.square.map(3)


def test_map_paths_become_lua() -> None:
    @de.task
    def pairs() -> dict[str, Any]:
        return {"a b": [[5, 6]]}

    @de.workflow
    def nested() -> Any:
        return map_flows.square.map(pairs()["a b"][0])

    assert nested.nodes["square"].map == 'results.pairs["a b"][1]'
    assert nested.run().outputs["square"] == [{"sq": 25}, {"sq": 36}]


def test_a_failed_item_fails_the_mapped_node_and_skips_its_children() -> None:
    @de.task
    def fragile(x: int) -> dict[str, Any]:
        if x == 2:
            raise ValueError("no twos")
        return {"sq": x}

    @de.workflow
    def flow() -> Any:
        return map_flows.total(fragile.map([1, 2, 3]))

    result = flow.run()
    assert result.status is RunStatus.FAILED
    assert result.node_results["fragile"].status.value == "failed"
    assert result.node_results["total"].skip_reason == "upstream_failed"
    assert result.error is not None
    assert result.error.node_id == "fragile"
    assert "item 1 failed" in result.error.message
    assert "no twos" in result.error.message


# --- the explicit style and specs -------------------------------------------------------------


def test_explicit_nodes_read_ctx_item_and_index() -> None:
    dag = DAG("explicit")
    dag.lua("rows", "return {rows = {'a', 'b'}}")

    @dag.task(deps=["rows"], map="results.rows.rows", max_parallel=1)
    def label(ctx: NodeContext) -> dict[str, Any]:
        return {"label": f"{ctx.index}:{ctx.item}", "id": ctx.node_id}

    dag.lua(
        "upper", "return {u = string.upper(item), i = index}", ["rows"], map="results.rows.rows"
    )
    dag.add_node(Node("count", ["label"], LuaExecutor("return {n = #results.label}")))
    result = dag.run()
    assert result.outputs["label"] == [
        {"label": "0:a", "id": "label[0]"},
        {"label": "1:b", "id": "label[1]"},
    ]
    assert result.outputs["upper"] == [{"u": "A", "i": 0}, {"u": "B", "i": 1}]
    assert result.outputs["count"] == {"n": 2}


def test_a_spec_round_trips_map_and_its_options() -> None:
    spec = {
        "id": "spec-map",
        "nodes": [
            {"id": "rows", "lua": "return {rows = {1, 2, 3}}"},
            {
                "id": "sq",
                "deps": ["rows"],
                "lua": "return {sq = item * item}",
                "map": "results.rows.rows",
                "max_parallel": 2,
                "allow_partial": True,
                "max_items": 10,
            },
        ],
    }
    dag = DAG.from_spec(spec)
    assert dag.to_spec()["nodes"][1] == spec["nodes"][1]
    assert dag.run().outputs["sq"] == [{"sq": 1}, {"sq": 4}, {"sq": 9}]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            {"id": "m", "noop": True, "map": "results.ghost.rows"},
            r"nodes\[0\]\.map: node 'm': map reads results\.ghost, which is not one of its deps",
        ),
        (
            {"id": "m", "noop": True, "map": "  "},
            r"nodes\[0\]\.map: node 'm': map must not be empty",
        ),
        (
            {"id": "m", "noop": True, "max_parallel": 2},
            r"nodes\[0\]\.max_parallel: node 'm': max_parallel is for a mapped node",
        ),
        (
            {"id": "m", "noop": True, "map": "inputs.x", "max_items": 0},
            r"nodes\[0\]\.max_items: node 'm': max_items must be a positive integer, got 0",
        ),
    ],
)
def test_bad_map_options_fail_the_spec_naming_the_node(node: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        DAG.from_spec({"id": "bad", "nodes": [node]})


def test_a_map_naming_an_unknown_node_fails_the_node_definition() -> None:
    with pytest.raises(SpecError, match=r"map reads results\.ghost, which is not one of its deps"):
        Node("m", ["a"], map="results.ghost")
    with pytest.raises(de.LuaSyntaxError, match="node 'm': map: syntax error"):
        DAG().add_node(Node("m", map="inputs.x +"))


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("inputs.n", "got a number (3)"),
        ("inputs.missing", "got nil"),
        ("inputs.obj", "got a table with keys"),
    ],
)
def test_a_map_that_is_not_a_list_fails_its_node(expression: str, says: str) -> None:
    dag = DAG("not-a-list")
    dag.add_node(Node("m", map=expression))
    result = dag.run({"n": 3, "obj": {"a": 1}})
    error = result.node_results["m"].error
    assert result.status is RunStatus.FAILED
    assert error is not None
    assert error.type == "TypeError"
    assert error.message.startswith("node 'm': map must give an array")
    assert says in error.message


def test_more_items_than_the_limit_fail_the_node() -> None:
    dag = DAG("limit")
    dag.add_node(Node("m", map="inputs.items", max_items=2))
    result = dag.run({"items": [1, 2, 3]})
    error = result.node_results["m"].error
    assert error is not None
    assert error.message == "node 'm': map gives 3 items, more than its limit of 2 (max_items)"


def test_when_is_evaluated_once_for_the_mapped_node() -> None:
    calls: list[str] = []

    def when(ctx: NodeContext) -> bool:
        calls.append(ctx.node_id)
        return True

    dag = DAG("when")
    dag.add_node(Node("m", executor=PythonExecutor(lambda ctx: {}), map="inputs.xs", when=when))
    assert dag.run({"xs": [1, 2, 3]}).outputs["m"] == [{}, {}, {}]
    assert calls == ["m"]
    dag = DAG("when-false")
    dag.add_node(Node("m", map="inputs.xs", when="#inputs.xs > 5"))
    assert dag.run({"xs": [1]}).node_results["m"].skip_reason == "condition"


def test_a_resumed_run_does_not_run_completed_items() -> None:
    seen: list[int] = []

    def work(ctx: NodeContext) -> dict[str, Any]:
        seen.append(ctx.index)
        return {"v": ctx.item * 10}

    dag = DAG("resume")
    dag.add_node(Node("m", executor=PythonExecutor(work), map="inputs.xs"))
    result = dag.run({"xs": [1, 2, 3, 4]}, completed={"m[0]": {"v": -1}, "m[2]": {"v": -3}})
    assert sorted(seen) == [1, 3]
    assert result.outputs["m"] == [{"v": -1}, {"v": 20}, {"v": -3}, {"v": 40}]
    with pytest.raises(SpecError, match="completed names 'm\\[x\\]'"):
        dag.run({"xs": []}, completed={"m[x]": {}})


# --- on an engine -----------------------------------------------------------------------------


def test_mapped_workflows_run_on_an_engine(engine: str) -> None:
    with EngineClient(engine, timeout=30) as client:
        result = client.run(map_flows.numbers, {"day": "d"})
        assert result.status is RunStatus.SUCCEEDED, result.error
        assert result.outputs["square"] == [{"sq": 1}, {"sq": 4}, {"sq": 9}]
        assert result.outputs["total"] == {"sum": 14}
        assert client.run(map_flows.partial).outputs["survivors"] == {"kept": [1, 3]}
        events = [
            e
            for e in client.stream(map_flows.scaled, {"items": [4, 5]})
            if isinstance(e, NodeEvent)
        ]
        assert [(e.node_id, e.detail) for e in events if e.kind == "node_mapped"] == [
            ("scale", {"count": 2})
        ]
        items = {e.node_id for e in events if e.kind == "node_succeeded"}
        assert {"scale[0]", "scale[1]", "scale", "total"} <= items
        bad = client.run(
            {"id": "bad", "nodes": [{"id": "m", "noop": True, "map": "inputs.n"}]}, {"n": 1}
        )
        error = bad.node_results["m"].error
        assert error is not None
        assert "node 'm': map must give an array, got a number (1)" in error.message


def test_items_get_their_own_results_dict_over_shared_outputs() -> None:
    seen: list[tuple[int | None, bool, int]] = []

    def work(ctx: NodeContext) -> dict[str, Any]:
        seen.append((ctx.index, "mine" in ctx.results, len(ctx.results["rows"]["rows"])))
        ctx.results["mine"] = True  # an item's own dict: the next item does not see it
        return {}

    dag = DAG("results")
    dag.lua("rows", "local t = {} for i = 1, 500 do t[i] = i end return {rows = t}")
    dag.add_node(Node("m", ["rows"], PythonExecutor(work), map="results.rows.rows", max_parallel=1))
    assert dag.run().status is RunStatus.SUCCEEDED
    assert seen == [(i, False, 500) for i in range(500)]


def test_a_mapped_sub_workflow_runs_one_child_per_item(tmp_path: Path) -> None:
    orch = Orchestrator(store=str(tmp_path / "store.db"))
    try:
        child = DAG("double", "1.0.0")
        child.lua("twice", "return {v = inputs.item * 2, i = inputs.index}")
        orch.register_workflow("double", "1.0.0", child)
        parent = DAG("parent", "1.0.0")
        parent.add_node(Node("each", executor=SubWorkflow("double"), map="inputs.xs"))
        orch.register_workflow("parent", "1.0.0", parent)
        result = orch.execute_workflow("parent", {"xs": [5, 7]})
        assert result.status is RunStatus.SUCCEEDED, result.error
        assert result.outputs["each"] == [
            {"twice": {"v": 10, "i": 0}},
            {"twice": {"v": 14, "i": 1}},
        ]
    finally:
        orch.stop()


def test_the_harness_replaces_a_mapped_node_per_item() -> None:
    from dagengine import testing

    run = testing.run(
        map_flows.numbers, {"day": "d"}, replace={"square": lambda ctx: {"sq": ctx.item + 10}}
    )
    run.assert_succeeded()
    run.assert_output("square", [{"sq": 11}, {"sq": 12}, {"sq": 13}])
    run.assert_output("total", {"sum": 36})
    constant = testing.run(map_flows.numbers, {"day": "d"}, replace={"square": {"sq": 1}})
    constant.assert_output("total", {"sum": 3})
