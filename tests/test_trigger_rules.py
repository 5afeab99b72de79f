"""Conditions (``when``) and trigger rules on local runs: each rule's semantics, skip reasons
on results and events, bad input, specs, resumed runs, and a hypothesis property against a
reference model of the rules written here in plain Python."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dagengine import (
    DAG,
    LuaExecutor,
    LuaSyntaxError,
    Node,
    NodeContext,
    NodeEvent,
    NodeStatus,
    NoopExecutor,
    PythonExecutor,
    RunStatus,
    SpecError,
    parse_workflow,
)
from dagengine.spec_model import TRIGGER_RULES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# --- a reference model of the rules -----------------------------------------------------------

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


def rule_decision(rule: str, parents: list[str]) -> str | None:
    """``None`` to run, else the skip reason, from the final outcome class of every parent
    (``ok``; ``failed``: failed or upstream_failed; ``skipped``: any other skip)."""
    if not parents:
        return None
    ok = parents.count(OK)
    failed = parents.count(FAILED)
    skipped = parents.count(SKIPPED)
    n = len(parents)
    if rule == "all_success":
        return "upstream_failed" if failed else ("trigger_rule" if skipped else None)
    if rule == "all_done":
        return None
    if rule == "all_failed":
        return None if failed == n else "trigger_rule"
    if rule == "one_success":
        if ok:
            return None
        return "upstream_failed" if failed else "trigger_rule"
    if rule == "one_failed":
        return None if failed else "trigger_rule"
    if rule == "none_failed":
        return "upstream_failed" if failed else None
    if rule == "none_failed_min_one_success":
        if failed:
            return "upstream_failed"
        return None if ok else "trigger_rule"
    if rule == "none_skipped":
        return "trigger_rule" if skipped else None
    raise AssertionError(rule)


def reference(
    deps: list[list[int]], rules: list[str], acts: list[str]
) -> list[tuple[str, str | None]]:
    """Expected (status, skip_reason) of every node; ``acts`` says what a node that runs does:
    ``ok``, ``fail`` or ``false`` (its condition is false)."""
    out: list[tuple[str, str | None]] = []
    classes: list[str] = []
    for i, parents in enumerate(deps):
        reason = rule_decision(rules[i], [classes[p] for p in parents])
        if reason is not None:
            out.append(("skipped", reason))
            classes.append(FAILED if reason == "upstream_failed" else SKIPPED)
        elif acts[i] == "ok":
            out.append(("succeeded", None))
            classes.append(OK)
        elif acts[i] == "fail":
            out.append(("failed", None))
            classes.append(FAILED)
        else:
            out.append(("skipped", "condition"))
            classes.append(SKIPPED)
    return out


def states(result: Any) -> dict[str, tuple[str, str | None]]:
    return {nid: (res.status.value, res.skip_reason) for nid, res in result.node_results.items()}


# --- semantics --------------------------------------------------------------------------------


def boom(ctx: NodeContext) -> None:
    raise ValueError("boom")


def two_parents(rule: str, first: str, second: str) -> DAG:
    """``a`` and ``b`` doing ``first``/``second`` (ok, fail, false), ``c`` under ``rule``."""
    dag = DAG("rules")
    for nid, act in (("a", first), ("b", second)):
        if act == "fail":
            dag.add_node(Node(nid, [], PythonExecutor(boom)))
        else:
            dag.add_node(Node(nid, [], when="true" if act == "ok" else "false"))
    dag.add_node(Node("c", ["a", "b"], LuaExecutor("return {ran = true}"), trigger_rule=rule))
    return dag


@pytest.mark.parametrize("rule", TRIGGER_RULES)
def test_each_rule_over_every_pair_of_parent_outcomes(rule: str) -> None:
    for first in ("ok", "fail", "false"):
        for second in ("ok", "fail", "false"):
            result = two_parents(rule, first, second).run()
            want = reference(
                [[], [], [0, 1]], ["all_success", "all_success", rule], [first, second, "ok"]
            )
            got = states(result)["c"]
            assert got == want[2], f"{rule} after {first}, {second}"
            if got == ("succeeded", None):
                assert result.outputs["c"] == {"ran": True}
            # Airflow's "any failure" rule: a failure absorbed by a rule still fails the run.
            failed = "fail" in (first, second)
            assert result.status is (RunStatus.FAILED if failed else RunStatus.SUCCEEDED)


def test_conditions_read_inputs_and_results_and_python_callables() -> None:
    dag = DAG("when")
    dag.add_node(Node("extract", [], LuaExecutor("return {rows = inputs.rows}")))
    dag.add_node(Node("load", ["extract"], when="#results.extract.rows > 0"))
    dag.add_node(Node("alert", ["extract"], when="#results.extract.rows == 0 -- nothing came"))
    seen: list[NodeContext] = []

    def big(ctx: NodeContext) -> bool:
        seen.append(ctx)
        return len(ctx.results["extract"]["rows"]) > int(ctx.inputs["limit"])

    dag.add_node(Node("archive", ["extract"], PythonExecutor(lambda ctx: {"n": 1}), when=big))
    dag.add_node(Node("report", ["load", "alert"], trigger_rule="none_failed_min_one_success"))
    result = dag.run({"rows": [1, 2, 3], "limit": 5})
    assert result.ok
    assert states(result) == {
        "extract": ("succeeded", None),
        "load": ("succeeded", None),
        "alert": ("skipped", "condition"),
        "archive": ("skipped", "condition"),
        "report": ("succeeded", None),
    }
    assert [c.node_id for c in seen] == ["archive"]
    assert seen[0].attempt == 1
    skipped = dag.run({"rows": [], "limit": 0})
    assert states(skipped)["load"] == ("skipped", "condition")
    assert states(skipped)["alert"] == ("succeeded", None)
    ran = dag.run({"rows": [1, 2], "limit": 1})
    assert ran.outputs["archive"] == {"n": 1}


def test_skip_reasons_are_in_the_events_and_the_result_dict() -> None:
    dag = DAG("events")
    dag.add_node(Node("f", [], PythonExecutor(boom)))
    dag.add_node(Node("down", ["f"]))
    dag.add_node(Node("off", [], when="false"))
    dag.add_node(Node("strict", ["off"]))
    dag.add_node(Node("cleanup", ["down", "strict"], trigger_rule="all_done"))
    events: list[NodeEvent] = []
    result = dag.run(on_event=events.append)
    skips = {e.node_id: e.detail for e in events if e.kind == "node_skipped"}
    assert skips == {
        "down": {"reason": "upstream_failed"},
        "off": {"reason": "condition"},
        "strict": {"reason": "trigger_rule"},
    }
    started = {e.node_id for e in events if e.kind == "node_started"}
    assert "off" not in started  # a false condition is not a start
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.node_id == "f"
    assert result.node_results["cleanup"].status is NodeStatus.SUCCEEDED
    as_dict = result.to_dict()
    assert as_dict["nodes"]["off"]["skip_reason"] == "condition"
    assert "skip_reason" not in as_dict["nodes"]["cleanup"]
    again = type(result).from_dict(as_dict)
    assert again.node_results["down"].skip_reason == "upstream_failed"
    off = result.node_results["off"]
    assert (off.attempts, off.started_at) == (0, None)


def test_upstream_failed_counts_as_failed_for_the_next_rule() -> None:
    dag = DAG("chain")
    dag.add_node(Node("f", [], LuaExecutor("error('no')")))
    dag.add_node(Node("mid", ["f"]))
    dag.add_node(Node("handler", ["mid"], trigger_rule="one_failed"))
    dag.add_node(Node("quiet", ["mid"], trigger_rule="none_failed"))
    result = dag.run()
    assert states(result) == {
        "f": ("failed", None),
        "mid": ("skipped", "upstream_failed"),
        "handler": ("succeeded", None),
        "quiet": ("skipped", "upstream_failed"),
    }


def test_a_condition_is_checked_once_and_retries_do_not_recheck_it() -> None:
    calls: list[int] = []

    def flaky(ctx: NodeContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise RuntimeError("first try")
        return {"attempt": ctx.attempt}

    def when(ctx: NodeContext) -> bool:
        calls.append(ctx.attempt)
        return True

    dag = DAG("retry")
    dag.add_node(
        Node("n", [], PythonExecutor(flaky), when=when, retries=1, retry_backoff=None, timeout=None)
    )
    result = dag.run()
    assert result.outputs["n"] == {"attempt": 2}
    assert calls == [1]


# --- bad input --------------------------------------------------------------------------------


def test_unknown_trigger_rule_is_refused_naming_the_node_and_the_rules() -> None:
    with pytest.raises(SpecError) as err:
        Node("load", ["x"], trigger_rule="all_sucess")
    message = str(err.value)
    assert "'load'" in message
    assert "all_sucess" in message
    assert "did you mean 'all_success'" in message
    assert all(rule in message for rule in TRIGGER_RULES)
    with pytest.raises(SpecError, match=r"nodes\[1\]\.trigger_rule: node 'b': unknown trigger"):
        parse_workflow(
            {
                "id": "w",
                "nodes": [
                    {"id": "a", "noop": True},
                    {"id": "b", "noop": True, "deps": ["a"], "trigger_rule": "sometimes"},
                ],
            }
        )


def test_a_when_that_is_not_boolean_fails_its_node_naming_it() -> None:
    for when, want in (
        ("inputs.n", "node 'x': when must be a boolean, got a number (3)"),
        ("inputs.missing", "node 'x': when must be a boolean, got nil"),
        ("error('bad')", "node 'x': when:"),
    ):
        dag = DAG("bad")
        dag.add_node(Node("x", [], when=when))
        dag.add_node(Node("after", ["x"]))
        result = dag.run({"n": 3})
        assert result.status is RunStatus.FAILED
        error = result.node_results["x"].error
        assert error is not None
        assert want in error.message, (when, error)
        assert result.node_results["after"].skip_reason == "upstream_failed"
    dag = DAG("bad-python")
    dag.add_node(Node("x", [], PythonExecutor(lambda ctx: None), when=lambda ctx: "yes"))
    result = dag.run()
    error = result.node_results["x"].error
    assert error is not None
    assert error.type == "TypeError"
    assert "node 'x': when must return a bool, got str 'yes'" in error.message


def test_bad_when_values_are_refused_when_the_node_is_built() -> None:
    with pytest.raises(LuaSyntaxError, match=r"node 'x': when: syntax error"):
        DAG().add_node(Node("x", [], when="1 +"))
    with pytest.raises(TypeError, match=r"node 'x': when must be a Lua expression"):
        Node("x", [], when=3)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="when must not be empty"):
        Node("x", [], when=" ")
    with pytest.raises(SpecError, match=r"nodes\[0\]\.when: expected a Lua boolean"):
        parse_workflow({"id": "w", "nodes": [{"id": "a", "noop": True, "when": True}]})


# --- specs and resumed runs -------------------------------------------------------------------


def test_specs_carry_when_and_trigger_rule_and_refuse_python_conditions() -> None:
    spec = {
        "id": "spec",
        "nodes": [
            {"id": "a", "lua": "return {go = inputs.go}"},
            {"id": "b", "deps": ["a"], "noop": True, "when": "results.a.go"},
            {"id": "c", "deps": ["b"], "noop": True, "trigger_rule": "none_failed"},
        ],
    }
    dag = DAG.from_spec(spec)
    assert dag.nodes["b"].when == "results.a.go"
    assert dag.nodes["c"].trigger_rule == "none_failed"
    assert dag.to_spec()["nodes"] == spec["nodes"]
    assert states(dag.run({"go": False}))["b"] == ("skipped", "condition")
    assert states(dag.run({"go": False}))["c"] == ("succeeded", None)
    inline = DAG("inline")
    inline.add_node(Node("a", [], when=lambda ctx: True))
    with pytest.raises(SpecError, match=r"node 'a': a Python callable as when only works"):
        inline.to_spec()


def test_a_resumed_run_decides_rules_from_completed_parents() -> None:
    ran: list[str] = []

    def record(ctx: NodeContext) -> dict[str, str]:
        ran.append(ctx.node_id)
        return {"id": ctx.node_id}

    dag = DAG("resume")
    dag.add_node(Node("a", [], PythonExecutor(record)))
    dag.add_node(Node("gate", ["a"], PythonExecutor(record), when="results.a.id == 'a'"))
    dag.add_node(Node("fails", ["a"], PythonExecutor(record), trigger_rule="all_failed"))
    dag.add_node(Node("after", ["gate"], PythonExecutor(record)))
    result = dag.run(completed={"a": {"id": "a"}, "gate": {"id": "gate"}})
    assert sorted(ran) == ["after"]
    assert states(result) == {
        "a": ("succeeded", None),
        "gate": ("succeeded", None),
        "fails": ("skipped", "trigger_rule"),
        "after": ("succeeded", None),
    }


# --- the property -----------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def rule_cases(draw: st.DrawFn) -> tuple[list[list[int]], list[str], list[str], list[str]]:
    """Random DAG (parents are earlier nodes), a rule, an act (ok, fail, false) and how the
    node is built (lua, python, noop; its condition in Lua or Python) for each node."""
    n = draw(st.integers(1, 40))
    deps = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4)))) if i else []
        for i in range(n)
    ]
    rules = draw(st.lists(st.sampled_from(TRIGGER_RULES), min_size=n, max_size=n))
    acts = draw(
        st.lists(st.sampled_from(["ok", "ok", "ok", "fail", "false"]), min_size=n, max_size=n)
    )
    kinds = draw(st.lists(st.sampled_from(["lua", "python", "noop"]), min_size=n, max_size=n))
    return deps, rules, acts, kinds


def fail_python(ctx: NodeContext) -> None:
    raise RuntimeError(f"{ctx.node_id} fails")


def succeed_python(ctx: NodeContext) -> dict[str, str]:
    return {"id": ctx.node_id}


def build_case(
    deps: list[list[int]], rules: list[str], acts: list[str], kinds: list[str]
) -> tuple[DAG, dict[str, bool]]:
    """The DAG of a case and its inputs: a node's condition is ``inputs.go_<i>`` (in Lua for
    lua and noop nodes, a Python callable for python ones); only ``false`` acts make it false.
    """
    dag = DAG("property")
    inputs: dict[str, bool] = {}
    for i, (parents, rule, act, kind) in enumerate(zip(deps, rules, acts, kinds, strict=True)):
        executor: LuaExecutor | PythonExecutor | NoopExecutor
        when: str | Callable[[NodeContext], bool] | None = None
        key = f"go_{i}"
        if kind == "python":
            executor = PythonExecutor(fail_python if act == "fail" else succeed_python)
            if act == "false" or i % 2:
                inputs[key] = act != "false"
                when = lambda ctx, key=key: bool(ctx.inputs[key])  # noqa: E731
        else:
            if kind == "lua":
                executor = LuaExecutor("error('no')" if act == "fail" else "return {ok = true}")
            else:
                executor = NoopExecutor() if act != "fail" else LuaExecutor("error('no')")
            if act == "false" or i % 3 == 0:
                inputs[key] = act != "false"
                when = f"inputs.{key}"
        dag.add_node(
            Node(f"n{i}", [f"n{p}" for p in parents], executor, when=when, trigger_rule=rule)
        )
    return dag, inputs


@PROPERTY_SETTINGS
@given(case=rule_cases(), max_parallel=st.sampled_from([None, 1, 3]))
def test_random_dags_match_the_reference_model(
    case: tuple[list[list[int]], list[str], list[str], list[str]], max_parallel: int | None
) -> None:
    deps, rules, acts, kinds = case
    dag, inputs = build_case(deps, rules, acts, kinds)
    result = dag.run(inputs, max_parallel=max_parallel)
    want = reference(deps, rules, acts)
    assert [states(result)[f"n{i}"] for i in range(len(deps))] == want
    failed = any(status == "failed" for status, _ in want)
    assert result.status is (RunStatus.FAILED if failed else RunStatus.SUCCEEDED)


def test_fail_fast_cancels_handlers_too() -> None:
    dag = DAG("fast", fail_fast=True)
    dag.add_node(Node("f", [], LuaExecutor("error('no')")))
    dag.add_node(Node("handler", ["f"], trigger_rule="one_failed"))
    result = dag.run()
    assert result.status is RunStatus.FAILED
    assert states(result)["handler"] == ("cancelled", None)
    assert states(dag.run(fail_fast=False))["handler"] == ("succeeded", None)
