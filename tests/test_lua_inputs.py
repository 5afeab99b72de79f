"""A Lua node's ``inputs`` are read-only and shared by the run; its ``results`` are its own."""

from __future__ import annotations

from dagengine import DAG, LuaExecutor, Node

INPUTS = {"values": [1, 2, 3], "obj": {"a": 1, "list": [True, None]}, "empty": []}


def test_writing_inputs_fails_the_node_naming_the_problem() -> None:
    dag = DAG("ro")
    dag.add_node(Node("w", [], LuaExecutor("local a = 1\ninputs.values[2] = 5\nreturn {}")))
    result = dag.run(INPUTS)
    error = result.node_results["w"].error
    assert error is not None
    assert error.type == "LuaRuntimeError"
    assert error.message == "node 'w': w:2: inputs is read-only (cannot set [2])"


def test_no_node_sees_another_nodes_attempt_to_change_the_inputs() -> None:
    dag = DAG("fan")
    writer = LuaExecutor(
        "local ok, e = pcall(function() inputs.obj.a = 99; table.insert(inputs.values, 4) end)"
        "\nreturn {ok = ok, a = inputs.obj.a, n = #inputs.values}"
    )
    for i in range(40):
        dag.add_node(Node(f"n{i}", [], writer))
    result = dag.run(INPUTS)
    assert result.ok, result.error
    assert all(out == {"ok": False, "a": 1, "n": 3} for out in result.outputs.values())


def test_returned_inputs_convert_to_their_values() -> None:
    dag = DAG("ret")
    dag.add_node(Node("all", [], LuaExecutor("return inputs")))
    dag.add_node(Node("part", [], LuaExecutor("return {o = inputs.obj, e = inputs.empty}")))
    result = dag.run(INPUTS)
    assert result.ok, result.error
    assert result.outputs["all"] == INPUTS
    assert result.outputs["part"] == {"o": INPUTS["obj"], "e": []}


def test_a_child_changing_its_results_does_not_change_a_siblings() -> None:
    dag = DAG("results")
    dag.add_node(Node("src", [], LuaExecutor("return {rows = {1, 2, 3}}")))
    mutate = LuaExecutor(
        "results.src.rows[1] = 99; results.src.extra = true; return {first = results.src.rows[1]}"
    )
    read = LuaExecutor("return {first = results.src.rows[1], extra = results.src.extra == nil}")
    for i in range(20):
        dag.add_node(Node(f"m{i}", ["src"], mutate))
        dag.add_node(Node(f"r{i}", ["src"], read))
    result = dag.run({})
    assert result.ok, result.error
    for i in range(20):
        assert result.outputs[f"m{i}"] == {"first": 99}
        assert result.outputs[f"r{i}"] == {"first": 1, "extra": True}
    assert result.outputs["src"] == {"rows": [1, 2, 3]}
