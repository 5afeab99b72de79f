"""``dagengine.task`` / ``dagengine.workflow``: recording the graph, delivering references,
node ids, the DAG it makes (local runs, specs, engines, the orchestrator), and bad use."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import dagengine as de
import pytest
from dagengine import DAG, EngineClient, NodeStatus, Orchestrator, SpecError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import authoring_flows as flows  # noqa: E402


def test_the_workflow_function_records_the_graph() -> None:
    wf = flows.numbers
    assert isinstance(wf, DAG)
    assert wf.dag is wf
    assert (wf.id, wf.version) == ("numbers", "1.0.0")
    assert wf.description == "Squares of the extracted rows, summed."
    assert list(wf.nodes) == ["extract", "square", "square_2", "square_3", "total"]
    assert wf.nodes["extract"].deps == ()
    assert wf.nodes["square_2"].deps == ("extract",)
    assert wf.nodes["total"].deps == ("square", "square_2", "square_3")
    assert (wf.nodes["extract"].retries, wf.nodes["extract"].timeout) == (2, 10.0)
    assert wf.nodes["square"].retries == 0
    assert wf.output is not None
    assert (wf.output.node_id, wf.output.path) == ("total", ())


def test_a_run_delivers_referenced_values_and_the_output() -> None:
    result = flows.numbers.run({"day": "2026-12-06", "factor": 2})
    result.raise_for_status()
    assert result.outputs["extract"] == {"rows": [1, 2, 3], "day": "2026-12-06"}
    assert result.outputs["square_3"] == {"sq": 9}
    assert flows.numbers.output_of(result) == {"sum": 28}


def test_a_resumed_run_feeds_completed_outputs_to_the_references() -> None:
    # What a failover does: nodes already done are not run again, their outputs delivered.
    result = flows.numbers.run({"day": "d"}, completed={"extract": {"rows": [4, 5, 6]}})
    assert result.node_results["extract"].attempts == 0
    assert flows.numbers.output_of(result) == {"sum": 77}


def test_run_async_runs_it_too() -> None:
    result = asyncio.run(flows.numbers.run_async({"day": "d", "factor": 1}))
    assert flows.numbers.output_of(result) == {"sum": 14}


def test_a_task_called_outside_a_workflow_runs_the_function() -> None:
    assert flows.square(4) == {"sq": 16}
    assert flows.total([{"sq": 1}, {"sq": 4}], factor=3) == {"sum": 15}
    assert flows.square.__name__ == "square"
    assert flows.square.__doc__ == flows.square.fn.__doc__


def test_constants_keywords_nested_containers_and_item_paths() -> None:
    seen: dict[str, Any] = {}

    @de.task
    def source() -> dict[str, Any]:
        return {"a": {"b": [10, 20]}, "name": "x"}

    @de.task
    def sink(first: int, *, pair: tuple[Any, ...], mapping: dict[str, Any], k: str) -> None:
        seen.update(first=first, pair=pair, mapping=mapping, k=k)

    @de.workflow
    def shapes(tag: str) -> None:
        s = source()
        sink(s["a"]["b"][1], pair=(s["name"], 7), mapping={"t": tag, "c": [1, s["a"]]}, k="K")

    assert shapes.id == "shapes"
    assert shapes.nodes["sink"].deps == ("source",)
    assert shapes.output is None
    shapes.run({"tag": "T"}).raise_for_status()
    assert seen == {
        "first": 20,
        "pair": ("x", 7),
        "mapping": {"t": "T", "c": [1, {"b": [10, 20]}]},
        "k": "K",
    }


def test_an_input_alone_adds_no_dependency() -> None:
    @de.task
    def echo(value: Any) -> dict[str, Any]:
        return {"value": value}

    @de.workflow
    def inputs_only(cfg: dict[str, Any]) -> Any:
        return echo(cfg["depth"][0])

    assert inputs_only.nodes["echo"].deps == ()
    result = inputs_only.run({"cfg": {"depth": [5, 6]}})
    assert inputs_only.output_of(result) == {"value": 5}


def test_node_ids_count_up_and_can_be_chosen() -> None:
    @de.task(id="base")
    def first() -> None:
        return None

    @de.task
    def base_2() -> None:
        return None

    @de.workflow
    def ids() -> None:
        base_2()
        first()
        first()  # base_2 is taken: the next free number
        first.with_options(id="chosen", retries=4)()
        flows.square(1)

    assert list(ids.nodes) == ["base_2", "base", "base_3", "chosen", "square"]
    assert ids.nodes["chosen"].retries == 4


def test_a_calls_node_is_the_node_the_constructor_makes() -> None:
    # Recording copies each call's node from its task's template instead of calling Node():
    # every field must still be what Node() with the task's options gives.
    options: dict[str, Any] = {
        "retries": 3,
        "timeout": "10s",
        "retry_backoff": de.RetryBackoff(initial=0.5, factor=3.0, max=9.0),
        "when": "inputs.go",
        "trigger_rule": "all_done",
        "cache": {"ttl": "1h"},
    }
    tuned = de.task(**options)(flows.square.fn)

    @de.workflow
    def copies(go: bool = True) -> None:
        tuned(tuned(tuned(2)["sq"])["sq"])

    nodes = copies.nodes
    assert list(nodes) == ["square", "square_2", "square_3"]
    for node_id, deps in (("square", ()), ("square_2", ("square",)), ("square_3", ("square_2",))):
        node = nodes[node_id]
        assert node == de.Node(node_id, deps, node.executor, **options)
    assert vars(nodes["square"]) is not vars(nodes["square_2"])
    assert nodes["square_3"].executor.import_path is None  # defined in a function
    assert copies.run({"go": True}).outputs["square_3"] == {"sq": 256}


def test_async_tasks_run() -> None:
    @de.task
    async def slow(x: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"x": x + 1}

    @de.workflow
    def chain() -> Any:
        return slow(slow(1)["x"])["x"]

    assert chain.output_of(chain.run()) == 3


def test_a_missing_output_key_fails_the_node_naming_task_and_key() -> None:
    result = flows.missing_key.run({"day": "d"})
    node = result.node_results["count"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type == "LookupError"
    assert (
        node.error.message
        == "task count (node 'count'): extract has no key 'rowz' (the value there is a dict)"
    )


def test_a_task_returning_no_dict_fails_its_node() -> None:
    @de.task
    def number() -> int:
        return 3

    @de.workflow
    def bad_return() -> Any:
        return number()

    error = bad_return.run().node_results["number"].error
    assert error is not None
    assert "returned int; expected a dict or None" in error.message


def test_a_wrong_call_is_a_type_error_while_recording() -> None:
    with pytest.raises(TypeError, match=r"task square: missing a required argument: 'x'"):

        @de.workflow
        def no_arg() -> None:
            flows.square()  # type: ignore[call-arg]

    with pytest.raises(TypeError, match=r"task square: got an unexpected keyword argument 'y'"):

        @de.workflow
        def bad_kwarg() -> None:
            flows.square(1, y=2)  # type: ignore[call-arg]

    with pytest.raises(TypeError, match=r"task square: too many positional arguments"):

        @de.workflow
        def too_many() -> None:
            flows.square(1, 2)  # type: ignore[call-arg]

    with pytest.raises(TypeError, match=r"multiple values for argument 'x'"):

        @de.workflow
        def twice() -> None:
            flows.square(1, x=2)  # type: ignore[misc]


def test_a_reference_has_no_value_while_recording() -> None:
    with pytest.raises(TypeError, match=r"<Ref results.extract\['rows'\]> has no value"):

        @de.workflow
        def branches(day: str) -> None:
            if flows.extract(day)["rows"]:
                pass

    with pytest.raises(TypeError, match=r"<Ref inputs.day> has no value .* iterated"):

        @de.workflow
        def loops(day: str) -> None:
            for _ in day:
                pass

    with pytest.raises(TypeError, match=r"an item of a reference is a str key or an int index"):

        @de.workflow
        def float_index(day: str) -> None:
            flows.square(flows.extract(day)[1.5])  # type: ignore[index]


def test_a_reference_is_only_valid_in_its_own_workflow() -> None:
    leaked: list[Any] = []

    @de.workflow
    def first() -> None:
        leaked.append(flows.square(1))

    with pytest.raises(TypeError, match=r"refers to a node of another workflow"):

        @de.workflow
        def second() -> None:
            flows.square(leaked[0])


def test_bad_workflow_functions() -> None:
    with pytest.raises(SpecError, match=r"workflow empty: its function called no task"):

        @de.workflow
        def empty() -> None:
            return None

    with pytest.raises(TypeError, match=r"return a task's reference"):

        @de.workflow
        def returns_value() -> Any:
            flows.square(1)
            return 5

    with pytest.raises(TypeError, match=r"parameter rest is \*args/\*\*kwargs"):

        @de.workflow
        def star(*rest: Any) -> None:
            flows.square(1)

    with pytest.raises(SpecError, match=r"retries must be >= 0"):
        de.task(retries=-1)(lambda: None)


def test_to_spec_names_the_workflows_node_callable() -> None:
    spec = flows.numbers.to_spec()
    assert spec["id"] == "numbers"
    assert spec["version"] == "1.0.0"
    paths = {node["python"] for node in spec["nodes"]}
    assert paths == {"authoring_flows:numbers.call_node"}
    assert spec["nodes"][0] == {
        "id": "extract",
        "python": "authoring_flows:numbers.call_node",
        "retries": 2,
        "timeout": "10s",
    }
    # The spec, bound again (importing the module), runs the same workflow.
    again = DAG.from_spec(spec)
    assert flows.numbers.output_of(again.run({"day": "d", "factor": 3})) == {"sum": 42}


def test_a_workflow_defined_in_a_function_has_no_spec() -> None:
    @de.workflow("local")
    def local() -> None:
        flows.square(1)

    with pytest.raises(SpecError, match=r"workflow local is defined inside a function"):
        local.to_spec()


def test_a_workflow_not_under_its_own_name_has_no_spec() -> None:
    renamed = de.workflow("renamed")(flows.numbers.fn)
    with pytest.raises(SpecError, match=r"authoring_flows:numbers is not this workflow"):
        renamed.to_spec()


def test_the_orchestrator_registers_it_by_its_own_id_and_version() -> None:
    orch = Orchestrator(store=":memory:")
    try:
        entry = orch.register_workflow(flows.numbers)
        assert (entry.workflow_id, str(entry.version)) == ("numbers", "1.0.0")
        result = orch.execute_workflow("numbers", {"day": "d", "factor": 2})
        assert isinstance(result, de.RunResult)
        assert flows.numbers.output_of(result) == {"sum": 28}
        with pytest.raises(TypeError, match=r"needs \(id, version, builder\) or a versioned DAG"):
            orch.register_workflow(DAG("no-version"))
    finally:
        orch.stop()


@pytest.mark.integration
def test_an_orchestrator_runs_it_on_an_engine_process(engine: str) -> None:
    orch = Orchestrator(store=":memory:", embedded_engine=False)
    try:
        orch.register_engine("remote", engine)
        orch.register_workflow(flows.numbers)
        result = orch.execute_workflow("numbers", {"day": "d", "factor": 3})
        assert isinstance(result, de.RunResult)
        result.raise_for_status()
        assert orch.get_run(result.run_id).engine_id == "remote"
        assert flows.numbers.output_of(result) == {"sum": 42}
    finally:
        orch.stop()


@pytest.mark.integration
def test_an_engine_process_runs_it_from_its_spec(engine: str) -> None:
    with EngineClient(engine, timeout=30) as client:
        result = client.run(flows.numbers, {"day": "d", "factor": 5})
    result.raise_for_status()
    assert flows.numbers.output_of(result) == {"sum": 70}
    assert result.outputs["extract"]["day"] == "d"


def test_dag_task_and_dag_lua_add_nodes() -> None:
    dag = DAG("explicit")
    dag.lua("extract", "return {rows = {1, 2, 3}}")

    @dag.task(deps=["extract"], retries=1)
    def transform(ctx: de.NodeContext) -> dict[str, Any]:
        return {"n": len(ctx.results["extract"]["rows"])}

    @dag.task
    def alone(ctx: de.NodeContext) -> None:
        return None

    dag.lua("scale", "return {v = results.transform.n * 10}", deps=["transform"], timeout="5s")
    assert transform.__name__ == "transform"  # the function itself comes back
    assert dag.nodes["transform"].deps == ("extract",)
    assert dag.nodes["transform"].retries == 1
    assert dag.nodes["scale"].timeout == 5.0
    assert dag.nodes["alone"].kind == "python"
    assert dag.run().outputs["scale"] == {"v": 30}
    with pytest.raises(de.LuaSyntaxError, match=r"node 'broken'"):
        dag.lua("broken", "return {")


def test_tasks_take_when_and_trigger_rule_like_nodes() -> None:
    @de.task
    def broken() -> dict[str, Any]:
        raise ValueError("broken on purpose")

    @de.task(trigger_rule="all_failed")
    def on_failure(_: Any) -> None:
        return None

    @de.task(when=lambda ctx: False)
    def never() -> None:
        return None

    @de.workflow
    def flow() -> None:
        on_failure(broken())
        never()
        never.with_options(id="lua_true", when="true")()
        never.with_options(id="all_done", trigger_rule="all_done")()

    nodes = flow.nodes
    assert nodes["on_failure"].trigger_rule == "all_failed"
    assert callable(nodes["never"].when)
    assert nodes["lua_true"].when == "true"
    assert nodes["all_done"].trigger_rule == "all_done"
    # Options not given to with_options stay as the task had them.
    assert callable(nodes["all_done"].when)
    result = flow.run()
    status = {node: r.status for node, r in result.node_results.items()}
    assert status["broken"] is NodeStatus.FAILED
    assert status["never"] is NodeStatus.SKIPPED
    assert status["lua_true"] is NodeStatus.SUCCEEDED
    assert status["all_done"] is NodeStatus.SKIPPED  # its when is still false
    with pytest.raises(SpecError, match="unknown trigger rule 'sometimes'"):
        de.task(trigger_rule="sometimes")(never.fn)
