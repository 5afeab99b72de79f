"""Caching node outputs in local runs: hits are not executed, misses store, ttl expiry,
code changes, custom keys and their failures, the node_cached event, decorated tasks."""

from __future__ import annotations

import copy
import sys
from typing import Any

import dagengine as de
import pytest
from dagengine import DAG, Node, PythonExecutor, SpecError
from dagengine.cache import MemoryCache, code_identity, default_cache, run_cache
from dagengine.spec_model import CachePolicy
from dagengine.testing import VirtualClock

CALLS: list[str] = []


def double(ctx: Any) -> dict[str, Any]:
    CALLS.append(ctx.run_id)
    return {"v": ctx.results["load"]["n"] * 2}


def triple(ctx: Any) -> dict[str, Any]:
    CALLS.append(ctx.run_id)
    return {"v": ctx.results["load"]["n"] * 3}


def build(fn: Any = double, **cache: Any) -> DAG:
    dag = DAG("cached")
    dag.lua("load", "return {n = inputs.n}")
    dag.add_node(Node("work", ["load"], PythonExecutor(fn), cache=cache or True))
    return dag


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()
    default_cache().clear()


def test_a_hit_is_not_executed_and_names_the_run_it_came_from() -> None:
    dag = build()
    first = dag.run({"n": 2}, run_id="r1")
    assert first.outputs["work"] == {"v": 4}
    assert first.node_results["work"].cached_from is None
    assert CALLS == ["r1"]

    events: list[de.NodeEvent] = []
    second = dag.run({"n": 2}, run_id="r2", on_event=events.append)
    assert second.status == "succeeded"
    assert second.outputs["work"] == {"v": 4}
    result = second.node_results["work"]
    assert result.status == "succeeded"
    assert result.cached_from == "r1"
    assert result.attempts == 0
    assert result.to_dict()["cached_from"] == "r1"
    assert CALLS == ["r1"], "the hit was not executed"
    work = [e for e in events if e.node_id == "work"]
    assert [e.kind for e in work] == ["node_cached", "node_succeeded"]
    assert work[0].detail is not None
    assert work[0].detail["run_id"] == "r1"
    assert len(work[0].detail["key"]) == 64
    # The parent is not cached: it ran again.
    assert next(e.kind for e in events if e.node_id == "load") == "node_started"


def test_other_inputs_miss() -> None:
    dag = build()
    dag.run({"n": 2}, run_id="r1")
    other = dag.run({"n": 3}, run_id="r2")
    assert other.outputs["work"] == {"v": 6}
    assert other.node_results["work"].cached_from is None
    assert CALLS == ["r1", "r2"]


def test_a_change_of_code_misses() -> None:
    build(double).run({"n": 2}, run_id="r1")
    changed = build(triple).run({"n": 2}, run_id="r2")
    assert changed.outputs["work"] == {"v": 6}
    assert changed.node_results["work"].cached_from is None
    assert code_identity(build(double).nodes["work"]) != code_identity(build(triple).nodes["work"])
    # A Lua node's code is its script.
    lua = DAG("lua")
    lua.lua("x", "return {v = inputs.n + 1}", cache=True)
    lua.run({"n": 1}, run_id="l1")
    assert lua.run({"n": 1}, run_id="l2").node_results["x"].cached_from == "l1"
    edited = DAG("lua")
    edited.lua("x", "return {v = inputs.n + 2}", cache=True)
    result = edited.run({"n": 1}, run_id="l3")
    assert result.node_results["x"].cached_from is None
    assert result.outputs["x"] == {"v": 3}


def test_ttl_expires_on_the_cache_clock() -> None:
    clock = VirtualClock()
    cache = MemoryCache(clock=clock)
    dag = build(ttl="1h")
    dag.run({"n": 2}, run_id="r1", cache=cache)
    clock.advance(3599)
    assert dag.run({"n": 2}, run_id="r2", cache=cache).node_results["work"].cached_from == "r1"
    clock.advance(1)
    expired = dag.run({"n": 2}, run_id="r3", cache=cache)
    assert expired.node_results["work"].cached_from is None
    assert CALLS == ["r1", "r3"]
    assert dag.run({"n": 2}, run_id="r4", cache=cache).node_results["work"].cached_from == "r3"


def test_a_custom_key_over_inputs_and_results() -> None:
    dag = build(key="inputs.day .. '/' .. results.load.n")
    dag.run({"n": 2, "day": "mon", "noise": 1}, run_id="r1")
    same_key = dag.run({"n": 2, "day": "mon", "noise": 2}, run_id="r2")
    assert same_key.node_results["work"].cached_from == "r1"
    other_day = dag.run({"n": 2, "day": "tue"}, run_id="r3")
    assert other_day.node_results["work"].cached_from is None


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("error('boom')", "node 'work': cache key: "),
        ("inputs.missing", "node 'work': cache key must be a string or a number, got nil"),
        ("{1}", "node 'work': cache key must be a string or a number, got a table"),
    ],
)
def test_a_failing_key_fails_its_node(key: str, problem: str) -> None:
    result = build(key=key).run({"n": 2})
    assert result.status == "failed"
    error = result.node_results["work"].error
    assert error is not None
    assert problem in error.message
    assert CALLS == []


def test_cache_none_runs_cached_nodes_and_another_cache_is_separate() -> None:
    dag = build()
    dag.run({"n": 2}, run_id="r1")
    assert dag.run({"n": 2}, run_id="r2", cache=None).node_results["work"].cached_from is None
    mine = MemoryCache()
    assert dag.run({"n": 2}, run_id="r3", cache=mine).node_results["work"].cached_from is None
    assert dag.run({"n": 2}, run_id="r4", cache=mine).node_results["work"].cached_from == "r3"
    assert CALLS == ["r1", "r2", "r3"]
    with pytest.raises(TypeError, match="cache must be a Cache"):
        run_cache("yes")  # type: ignore[arg-type]


def test_memory_cache_is_bounded_lru() -> None:
    cache = MemoryCache(2)
    cache.put("a", "k", {"v": 1}, "r1", None)
    cache.put("b", "k", {"v": 2}, "r1", None)
    assert cache.get("a", "k") == ({"v": 1}, "r1")  # a is now the most recent
    cache.put("c", "k", {"v": 3}, "r2", None)
    assert cache.get("b", "k") is None
    assert cache.get("a", "k") == ({"v": 1}, "r1")
    assert len(cache) == 2
    with pytest.raises(ValueError, match="max_entries"):
        MemoryCache(0)


class Broken:
    def get(self, node_id: str, key: str) -> Any:
        raise RuntimeError("store down")

    def put(self, *args: Any) -> None:
        raise RuntimeError("store down")


def test_a_cache_that_raises_is_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    result = build().run({"n": 2}, run_id="r1", cache=Broken())
    assert result.outputs["work"] == {"v": 4}
    assert seen == ["store down", "store down"]


@de.task(cache=True)
def scale(rows: list[int], factor: int) -> dict[str, Any]:
    CALLS.append("scale")
    return {"rows": [r * factor for r in rows]}


@de.task
def rows(n: int) -> dict[str, Any]:
    return {"rows": list(range(n))}


@de.workflow("scaled")
def scaled(n: int) -> Any:
    r = rows(n)
    scale(r["rows"], 10)
    return scale(r["rows"], 100)


def test_decorated_tasks_cache_per_call_with_their_constants() -> None:
    first = scaled.run({"n": 3})
    assert first.outputs["scale"] == {"rows": [0, 10, 20]}
    assert first.outputs["scale_2"] == {"rows": [0, 100, 200]}
    second = scaled.run({"n": 3})
    assert second.node_results["scale"].cached_from == first.run_id
    assert second.node_results["scale_2"].cached_from == first.run_id
    assert second.outputs["scale_2"] == {"rows": [0, 100, 200]}
    assert CALLS == ["scale", "scale"]


def test_cache_options_and_bad_values() -> None:
    assert Node("a", cache=True).cache == CachePolicy()
    assert Node("a", cache={"ttl": "1h"}).cache == CachePolicy(None, 3600.0)
    assert Node("a", cache=False).cache is None
    with pytest.raises(SpecError, match=r"node 'a': cache.tll: unknown key"):
        Node("a", cache={"tll": "1h"})
    with pytest.raises(SpecError, match=r"node 'a': .*cache.ttl"):
        Node("a", cache={"ttl": "soon"})
    with pytest.raises(SpecError, match=r"cache\.ttl must be positive"):
        Node("a", cache={"ttl": 0})
    with pytest.raises(SpecError, match="cache must be true or a mapping"):
        Node("a", cache="yes")  # type: ignore[arg-type]
    with pytest.raises(de.LuaSyntaxError, match=r"node 'a': cache.key"):
        Node("a", cache={"key": "inputs.("})
    with pytest.raises(SpecError, match="a mapped node cannot be cached"):
        Node("a", ["b"], map="results.b.rows", cache=True)


def test_a_cached_task_cannot_be_mapped() -> None:
    with pytest.raises(SpecError, match="node 'scale': a mapped node cannot be cached"):

        @de.workflow("mapped")
        def mapped(items: list[int]) -> Any:
            return scale.map(items, 2)


def test_spec_cache_round_trips_and_bad_values_fail_the_spec() -> None:
    spec: dict[str, Any] = {
        "id": "s",
        "nodes": [
            {"id": "load", "lua": "return {n = inputs.n}"},
            {"id": "a", "deps": ["load"], "lua": "return {v = 1}", "cache": True},
            {
                "id": "b",
                "deps": ["load"],
                "python": "node_funcs:double",
                "cache": {"key": "inputs.n", "ttl": "1h"},
            },
        ],
    }
    dag = de.parse_workflow(spec)
    assert dag.nodes["a"].cache == CachePolicy()
    assert dag.nodes["b"].cache == CachePolicy("inputs.n", 3600.0)
    assert dag.to_spec() == spec
    bad = [
        (
            {"key": "x", "ttl": "1h", "size": 3},
            "nodes[1].cache.size: node 'a': cache.size: unknown",
        ),
        ({"ttl": "forever"}, "nodes[1].cache.ttl: node 'a': "),
        ({"ttl": -5}, "nodes[1].cache.ttl: "),
        ({"key": 3}, "nodes[1].cache.key: node 'a': cache.key must be a non-empty Lua"),
        ("yes", "nodes[1].cache: node 'a': cache must be true or a mapping"),
    ]
    for value, message in bad:
        broken = copy.deepcopy(spec)
        broken["nodes"][1]["cache"] = value
        with pytest.raises(SpecError) as info:
            de.parse_workflow(broken)
        assert message in str(info.value), str(info.value)
    mapped = {
        "id": "s",
        "nodes": [
            {"id": "load", "lua": "return {rows = {1}}"},
            {
                "id": "m",
                "deps": ["load"],
                "lua": "return {}",
                "map": "results.load.rows",
                "cache": True,
            },
        ],
    }
    with pytest.raises(SpecError, match=r"nodes\[1\].cache: node 'm': a mapped node cannot"):
        de.parse_workflow(mapped)
    broken = copy.deepcopy(spec)
    broken["nodes"][1]["cache"] = {"key": "inputs.("}
    with pytest.raises(de.LuaSyntaxError, match=r"node 'a': cache\.key"):
        de.parse_workflow(broken)


def test_the_test_harness_runs_without_the_cache() -> None:
    from dagengine import testing

    # The harness wraps each node's function: with a cache, two workflows' nodes of one id
    # would share a code identity (the wrapper's) and the second would get the first's output.
    first = testing.run(build(double), {"n": 2})
    second = testing.run(build(triple), {"n": 2})
    assert first.result.outputs["work"] == {"v": 4}
    assert second.result.outputs["work"] == {"v": 6}
    assert second.result.node_results["work"].cached_from is None
    # Nor does a double's output stand in for a real run's, or the other way round.
    testing.run(build(double), {"n": 3}, replace={"work": {"v": -1}})
    real = build(double).run({"n": 3})
    assert real.outputs["work"] == {"v": 6}
    assert testing.run(build(double), {"n": 3}).result.outputs["work"] == {"v": 6}


def make_scaler(k: int) -> Any:
    def scale(ctx: Any) -> dict[str, Any]:
        return {"v": ctx.results["load"]["n"] * k}

    return scale


def test_closures_of_one_source_are_different_code() -> None:
    assert build(make_scaler(2)).run({"n": 5}).outputs["work"] == {"v": 10}
    other = build(make_scaler(3)).run({"n": 5})
    assert other.outputs["work"] == {"v": 15}
    assert other.node_results["work"].cached_from is None
    same = build(make_scaler(3)).run({"n": 5})
    assert same.node_results["work"].cached_from == other.run_id
