"""``NodeContext`` is native and the core calls a node without a condition directly
(``fn(ctx)``, no trampoline frame): what a node sees and what its return values do must be
the same on that path as through the trampoline (``DAG.start``, conditions)."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import pytest
from dagengine import DAG, Node, NodeContext, NodeStatus, PythonExecutor, RunStatus

PATIENCE = 10.0


def two_nodes(fn: Any) -> DAG:
    dag = DAG("ctx")
    dag.add_node(Node("a", [], PythonExecutor(lambda ctx: {"x": [1, 2]})))
    dag.add_node(Node("b", ["a"], PythonExecutor(fn)))
    return dag


@pytest.mark.parametrize("how", ["run", "start"])
def test_a_node_sees_the_same_context_on_both_paths(how: str) -> None:
    seen: dict[str, Any] = {}

    def node(ctx: NodeContext) -> dict[str, Any]:
        seen.update(
            is_ctx=isinstance(ctx, NodeContext),
            node_id=ctx.node_id,
            attempt=ctx.attempt,
            inputs_type=type(ctx.inputs),
            inputs=dict(ctx.inputs),
            index=ctx.index,
            item=ctx.item,
            cancelled=ctx.cancelled,
            results=ctx.results,
            same_dict=ctx.results is ctx.results,
            repr=repr(ctx),
        )
        ctx.results["a"]["x"].append(3)  # a call's own dict: nobody else sees this
        return {"run_id": ctx.run_id}

    dag = two_nodes(node)
    result = dag.run({"k": 1}) if how == "run" else dag.start({"k": 1}).wait(PATIENCE)
    assert result.ok, result.error
    assert seen["is_ctx"]
    assert seen["same_dict"]
    assert (seen["node_id"], seen["attempt"], seen["index"], seen["item"]) == ("b", 1, None, None)
    assert (seen["inputs_type"], seen["inputs"]) == (MappingProxyType, {"k": 1})
    assert seen["cancelled"] is False
    assert seen["results"] == {"a": {"x": [1, 2, 3]}}
    assert result.outputs["a"] == {"x": [1, 2]}
    assert result.outputs["b"] == {"run_id": result.run_id}
    assert seen["repr"] == f"NodeContext(node_id='b', run_id={result.run_id!r}, attempt=1)"


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({1: "x"}, "node b returned a dict with a int key 1; output keys must be str"),
        ([1], "node b returned list; expected a dict or None"),
        ("x", "node b returned str; expected a dict or None"),
    ],
)
def test_a_bad_output_fails_the_node_with_the_trampolines_message(
    returned: object, message: str
) -> None:
    result = two_nodes(lambda ctx: returned).run()
    assert result.status is RunStatus.FAILED
    error = result.node_results["b"].error
    assert error is not None
    assert (error.type, error.message) == ("TypeError", message)


def test_the_id_is_the_nodes_after_the_run_and_until_it_is_assigned() -> None:
    # The core hands a context its node's id only when it is read: a context kept past
    # its run still reads it, and one the node assigned reads the new value, while the
    # run's own messages keep naming the node.
    kept: list[NodeContext] = []

    def node(ctx: NodeContext) -> list[int]:
        kept.append(ctx)
        ctx.node_id = "renamed"
        return [1]

    dag = two_nodes(lambda ctx: kept.append(ctx))
    assert dag.run().ok
    del dag
    assert kept.pop().node_id == "b"
    result = two_nodes(node).run()
    error = result.node_results["b"].error
    assert error is not None
    assert error.message == "node b returned list; expected a dict or None"
    assert kept[0].node_id == "renamed"
    assert repr(kept[0]).startswith("NodeContext(node_id='renamed', ")


def test_a_dict_subclass_and_an_awaitable_from_a_sync_function_are_outputs() -> None:
    class Out(dict[str, Any]):
        pass

    async def later(ctx: NodeContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"later": ctx.node_id}

    dag = DAG("outs")
    dag.add_node(Node("sub", [], PythonExecutor(lambda ctx: Out(v=1))))
    # Not an ``async def``: it runs where sync nodes run, and returns a coroutine.
    dag.add_node(Node("aw", [], PythonExecutor(lambda ctx: later(ctx))))
    result = dag.run()
    assert result.ok, result.error
    assert result.outputs == {"sub": {"v": 1}, "aw": {"later": "aw"}}


def test_an_exception_carries_its_type_message_and_traceback() -> None:
    def explode(ctx: NodeContext) -> None:
        raise ValueError("bad " + ctx.node_id)

    result = two_nodes(explode).run()
    error = result.node_results["b"].error
    assert error is not None
    assert (error.type, error.message) == ("ValueError", "bad b")
    assert error.traceback is not None
    assert "explode" in error.traceback


def test_mapped_items_see_their_item_and_index() -> None:
    dag = DAG("items")
    dag.add_node(Node("a", [], PythonExecutor(lambda ctx: {"rows": [10, 20, 30]})))
    dag.add_node(
        Node(
            "sq",
            ["a"],
            PythonExecutor(
                lambda ctx: {
                    "id": ctx.node_id,
                    "i": ctx.index,
                    "v": ctx.item * ctx.item,
                    "parent": len(ctx.results["a"]["rows"]),
                }
            ),
            map="results.a.rows",
        )
    )
    result = dag.run()
    assert result.ok, result.error
    assert result.outputs["sq"] == [
        {"id": f"sq[{i}]", "i": i, "v": v * v, "parent": 3} for i, v in enumerate([10, 20, 30])
    ]


def test_a_context_made_by_hand() -> None:
    inputs = {"k": 1}
    ctx = NodeContext(inputs, {"p": {"v": 2}}, "n", "r", 2, None, (4, "it"))
    assert type(ctx.inputs) is MappingProxyType
    assert dict(ctx.inputs) == inputs
    with pytest.raises(TypeError):
        ctx.inputs["k"] = 2  # type: ignore[index]
    assert (ctx.node_id, ctx.run_id, ctx.attempt, ctx.index, ctx.item) == ("n", "r", 2, 4, "it")
    assert ctx.results == {"p": {"v": 2}}
    assert ctx.cancelled is False
    ctx.results = {"q": {}}
    assert ctx.results == {"q": {}}
    proxy = MappingProxyType({"a": 1})
    assert NodeContext(proxy, {}, "n", "r", 1).inputs is proxy
    assert NodeContext(proxy, {}, "n", "r", 1).index is None
    with pytest.raises(TypeError):
        NodeContext({}, {}, "n")  # type: ignore[call-arg]


class _Sub(dict[str, Any]):
    """A dict subclass: its output goes through the general conversion."""


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        float("nan"),
        float("inf"),
        "text",
        "\u00e9\U0001f600",
        [1, [2, (3, 4)], {"k": None}],
        (1, "a"),
        {"nested": {"deeper": [{"x": 1.0}]}},
        _Sub(s=1),
        {1: "int key"},
        2**70,
        {"s": {1, 2}},
    ],
    ids=repr,
)
def test_an_output_converts_as_the_general_conversion_does(value: object) -> None:
    """Exact dicts of plain values are read by the core's own reader; the same value under a
    dict subclass goes the general way: both must give the same output, or the same error."""
    dag = DAG("outs")
    dag.add_node(Node("plain", [], PythonExecutor(lambda ctx: {"v": value})))
    dag.add_node(Node("general", [], PythonExecutor(lambda ctx: _Sub(v=value))))
    result = dag.run()
    plain, general = result.node_results["plain"], result.node_results["general"]
    assert plain.status is general.status
    if general.error is not None:
        assert plain.error is not None
        assert plain.error.message == general.error.message.replace("general", "plain")
    else:
        assert plain.output == general.output


def test_a_python_condition_and_its_node_share_one_context() -> None:
    seen: list[NodeContext] = []

    def cond(ctx: NodeContext) -> bool:
        seen.append(ctx)
        return ctx.node_id != "skip"

    def node(ctx: NodeContext) -> dict[str, Any]:
        seen.append(ctx)
        return {"same": seen[-2] is ctx}

    dag = DAG("when")
    dag.add_node(Node("run", [], PythonExecutor(node), when=cond))
    dag.add_node(Node("skip", [], PythonExecutor(node), when=cond))
    dag.add_node(Node("bad", [], PythonExecutor(node), when=lambda ctx: "yes"))
    result = dag.run()
    assert result.outputs["run"] == {"same": True}
    assert result.node_results["skip"].status is NodeStatus.SKIPPED
    error = result.node_results["bad"].error
    assert error is not None
    assert (error.type, error.message) == (
        "TypeError",
        "node 'bad': when must return a bool, got str 'yes'",
    )
