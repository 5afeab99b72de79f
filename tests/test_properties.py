"""Hypothesis properties on random DAGs (up to 200 nodes) and on the spec format."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

import pytest
from dagengine import (
    DAG,
    CycleError,
    Node,
    NodeContext,
    NodeStatus,
    PythonExecutor,
    RunStatus,
    parse_workflow,
)
from dagengine._units import format_duration, format_size, parse_duration, parse_size
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RUN_SETTINGS = settings(
    deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow]
)

Graph = dict[str, list[str]]  # node id -> parent ids


@st.composite
def random_dags(draw: st.DrawFn, max_nodes: int = 200) -> tuple[Graph, list[str]]:
    """A random DAG (edges only from earlier to later nodes) and a random insertion order."""
    n = draw(st.integers(1, max_nodes))
    ids = [f"n{i}" for i in range(n)]
    graph: Graph = {}
    for i, node in enumerate(ids):
        if i == 0:
            graph[node] = []
            continue
        k = draw(st.integers(0, min(3, i)))
        parents = draw(st.lists(st.sampled_from(ids[:i]), min_size=k, max_size=k, unique=True))
        graph[node] = parents
    order = draw(st.permutations(ids))
    return graph, list(order)


def descendants(graph: Graph, roots: set[str]) -> set[str]:
    children: dict[str, list[str]] = {n: [] for n in graph}
    for node, parents in graph.items():
        for parent in parents:
            children[parent].append(node)
    seen: set[str] = set()
    stack = [c for r in roots for c in children[r]]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(children[node])
    return seen


class Recorder:
    """Python node bodies that record execution and check parents ran first."""

    def __init__(self, graph: Graph, failing: set[str]) -> None:
        self.graph = graph
        self.failing = failing
        self.lock = threading.Lock()
        self.done: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.violations: list[str] = []

    def __call__(self, ctx: NodeContext) -> dict[str, Any]:
        node = ctx.node_id
        with self.lock:
            self.calls[node] += 1
            missing = [p for p in self.graph[node] if p not in self.done]
            if missing:
                self.violations.append(f"{node} ran before {missing}")
        if set(ctx.results) != set(self.graph[node]):
            self.violations.append(f"{node} got results of {sorted(ctx.results)}")
        if node in self.failing:
            raise RuntimeError(f"injected failure in {node}")
        with self.lock:
            self.done.add(node)
        return {"id": node}


def build(graph: Graph, order: list[str], body: Recorder) -> DAG:
    dag = DAG("random")
    executor = PythonExecutor(body)
    for node in order:
        dag.add_node(Node(node, graph[node], executor))
    return dag


@RUN_SETTINGS
@given(random_dags(), st.integers(1, 8))
def test_every_node_runs_once_after_all_its_parents(
    case: tuple[Graph, list[str]], max_parallel: int
) -> None:
    graph, order = case
    recorder = Recorder(graph, set())
    result = build(graph, order, recorder).run(max_parallel=max_parallel)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert recorder.violations == []
    assert recorder.calls == Counter(list(graph))
    assert result.outputs == {node: {"id": node} for node in graph}
    topo = build(graph, order, recorder).topological_order()
    position = {node: i for i, node in enumerate(topo)}
    assert all(position[p] < position[n] for n, ps in graph.items() for p in ps)


@RUN_SETTINGS
@given(random_dags(), st.data())
def test_exactly_the_descendants_of_failed_nodes_are_skipped(
    case: tuple[Graph, list[str]], data: st.DataObject
) -> None:
    graph, order = case
    failing = set(data.draw(st.lists(st.sampled_from(sorted(graph)), max_size=5)))
    recorder = Recorder(graph, failing)
    result = build(graph, order, recorder).run()

    skipped = descendants(graph, failing)
    failed = failing - skipped  # a failing node below another failure never runs
    status = {node: res.status for node, res in result.node_results.items()}
    expected = {
        node: NodeStatus.SKIPPED
        if node in skipped
        else NodeStatus.FAILED
        if node in failed
        else NodeStatus.SUCCEEDED
        for node in graph
    }
    assert status == expected
    assert recorder.violations == []
    assert recorder.calls == Counter(n for n in graph if n not in skipped)
    assert result.status is (RunStatus.FAILED if failing else RunStatus.SUCCEEDED)
    assert set(result.outputs) == {n for n, s in expected.items() if s is NodeStatus.SUCCEEDED}


@settings(deadline=None, max_examples=60)
@given(random_dags(), st.data())
def test_an_injected_back_edge_is_always_reported_as_a_real_cycle(
    case: tuple[Graph, list[str]], data: st.DataObject
) -> None:
    graph, order = case
    with_parents = [n for n in graph if graph[n]]
    if not with_parents:
        graph["n_extra"] = [order[0]]
        order.append("n_extra")
        with_parents = ["n_extra"]
    # Walk up from a node to one of its ancestors; making the ancestor depend on the node
    # closes a cycle.
    low = data.draw(st.sampled_from(sorted(with_parents)))
    high = low
    steps = data.draw(st.integers(1, 10))
    for _ in range(steps):
        if not graph[high]:
            break
        high = data.draw(st.sampled_from(graph[high]))
    assert high != low
    graph[high] = [*graph[high], low]

    dag = DAG("cyclic")
    for node in order:
        dag.add_node(Node(node, graph[node]))
    with pytest.raises(CycleError) as info:
        dag.preprocess()
    cycle = info.value.cycle
    assert cycle is not None
    assert len(cycle) >= 3
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    # "x -> y" in the path: y depends on x.
    for parent, child in itertools.pairwise(cycle):
        assert parent in graph[child], (parent, child, cycle)
    assert " -> ".join(cycle) in str(info.value)


# --- spec format ---------------------------------------------------------------------------------

durations = st.one_of(
    st.integers(1, 10**6).map(lambda ms: ms / 1000),
    st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False),
)


@given(durations)
def test_duration_format_is_a_fixed_point(seconds: float) -> None:
    text = format_duration(seconds)
    again = parse_duration(text)
    assert again == pytest.approx(seconds, rel=1e-9)
    assert format_duration(again) == text


@given(st.integers(1, 2**40))
def test_size_format_is_a_fixed_point(size: int) -> None:
    assert parse_size(format_size(size)) == size


@st.composite
def canonical_specs(draw: st.DrawFn) -> dict[str, Any]:
    graph, _ = draw(random_dags(max_nodes=30))
    nodes = []
    for node, parents in graph.items():
        spec: dict[str, Any] = {"id": node}
        if parents:
            spec["deps"] = parents
        kind = draw(st.sampled_from(["noop", "lua", "workflow"]))
        if kind == "noop":
            spec["noop"] = True
        elif kind == "lua":
            spec["lua"] = f"return {{node = {node!r}}}".replace("'", '"')
        else:
            spec["workflow"] = draw(st.sampled_from(["child", "child@^1.4", "other@>=1.2,<2"]))
        retries = draw(st.integers(0, 3))
        if retries:
            spec["retries"] = retries
        if draw(st.booleans()):
            spec["timeout"] = draw(st.sampled_from(["250ms", "10s", "90s", "2m", "1h"]))
        if kind == "lua" and draw(st.booleans()):
            spec["limits"] = {"instructions": draw(st.integers(1, 10**9)), "memory": "64MiB"}
        nodes.append(spec)
    top: dict[str, Any] = {"id": "random", "version": f"1.{draw(st.integers(0, 20))}.0"}
    if draw(st.booleans()):
        top["max_parallel"] = draw(st.integers(1, 16))
    if draw(st.booleans()):
        top["fail_fast"] = True
    top["nodes"] = nodes
    return top


@settings(deadline=None, max_examples=40)
@given(canonical_specs())
def test_canonical_specs_round_trip(spec: dict[str, Any]) -> None:
    assert parse_workflow(spec).to_spec() == spec
