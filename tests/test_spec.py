"""Spec loading, validation errors (each names the problem and its path) and round trips."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import dagengine
import pytest
import yaml
from dagengine import (
    DAG,
    CycleError,
    DuplicateNodeError,
    ImportPathError,
    LuaExecutor,
    LuaSyntaxError,
    Node,
    NoopExecutor,
    PythonExecutor,
    SelfDependencyError,
    SpecError,
    SubWorkflow,
    UnknownDependencyError,
    ValidationError,
    dump_workflow,
    load_workflow,
    parse_workflow,
    spec_model,
)
from dagengine.engine import workflow_to_proto
from dagengine.spec import resolve_import_path
from dagengine.workflow import bind, workflow_model

FULL_SPEC: dict[str, Any] = {
    "id": "data-pipeline",
    "version": "1.2.0-rc.1+build.5",
    "description": "every feature once",
    "max_parallel": 4,
    "fail_fast": True,
    "timeout": "10m",
    "nodes": [
        {
            "id": "extract",
            "lua": "local rows = {1, 2, 3}\nreturn {rows = rows}\n",
            "timeout": "500ms",
            "limits": {"instructions": 100000, "memory": "64MiB"},
        },
        {
            "id": "double",
            "deps": ["extract"],
            "python": "node_funcs:double",
            "retries": 3,
            "retry_backoff": {"initial": "250ms", "factor": 3, "max": "90s"},
            "timeout": "1h",
        },
        {"id": "adder", "deps": ["extract"], "python": "node_funcs:Adder"},
        {"id": "nested", "python": "node_funcs:Namespace.inner", "retry_backoff": {"max": "2m"}},
        {"id": "report", "deps": ["double", "adder"], "workflow": "reporting@^1.4"},
        {"id": "any", "deps": ["report"], "workflow": "reporting"},
        {"id": "done", "deps": ["any", "nested"], "noop": True},
    ],
}

MINIMAL: dict[str, Any] = {"id": "w", "nodes": [{"id": "a", "noop": True}]}


def spec_with(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level keys replaced (None deletes)."""
    spec = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def node_spec(**fields: Any) -> dict[str, Any]:
    """MINIMAL whose single node has ``fields`` (id defaults to "a")."""
    node = {"id": "a", **fields}
    return {"id": "w", "nodes": [node]}


# --- happy path ---------------------------------------------------------------------------------


def test_parse_builds_the_dag() -> None:
    dag = parse_workflow(FULL_SPEC)
    assert dag.id == "data-pipeline"
    assert dag.version == "1.2.0-rc.1+build.5"
    assert dag.max_parallel == 4
    assert dag.fail_fast is True
    assert dag.timeout == 600.0
    extract = dag.nodes["extract"]
    assert isinstance(extract.executor, LuaExecutor)
    assert extract.executor.max_instructions == 100000
    assert extract.executor.max_memory == 64 * 1024 * 1024
    assert extract.timeout == 0.5
    double = dag.nodes["double"]
    assert isinstance(double.executor, PythonExecutor)
    assert double.retries == 3
    assert (double.retry_backoff.initial, double.retry_backoff.factor) == (0.25, 3.0)
    assert double.retry_backoff.max == 90.0
    report = dag.nodes["report"].executor
    assert report == SubWorkflow("reporting", "^1.4")
    assert dag.nodes["any"].executor == SubWorkflow("reporting", "*")
    assert isinstance(dag.nodes["done"].executor, NoopExecutor)
    assert dag.levels() == [
        ["extract", "nested"],
        ["double", "adder"],
        ["report"],
        ["any"],
        ["done"],
    ]


def test_class_import_path_is_instantiated_and_used() -> None:
    executor = resolve_import_path("node_funcs:Adder", node_id="n")
    out = executor.fn(dagengine.NodeContext({}, {"p": {"value": 4}}, "n", "r", 1))
    assert out == {"value": 5}


@pytest.mark.parametrize(
    "spec",
    [FULL_SPEC, MINIMAL, node_spec(lua="return {}", limits={"memory": 1000})],
    ids=["full", "minimal", "odd-memory"],
)
def test_canonical_spec_round_trips_exactly(spec: dict[str, Any]) -> None:
    assert parse_workflow(spec).to_spec() == spec
    assert DAG.from_spec(spec).to_spec() == spec


def test_non_canonical_spec_reaches_a_fixed_point() -> None:
    spec = node_spec(
        lua="return {}",
        deps=[],
        retries=0,
        timeout="1m30s",
        retry_backoff={"initial": 0.5, "factor": 2.0},
        limits={"memory": "1MB"},
    )
    spec["fail_fast"] = False
    spec["timeout"] = 7200
    spec["nodes"].insert(0, {"id": "b", "noop": True})
    spec["nodes"].append({"id": "c", "workflow": "child@*", "timeout": 0.0015})
    once = parse_workflow(spec).to_spec()
    assert once["timeout"] == "2h"
    node = once["nodes"][1]
    assert node == {
        "id": "a",
        "lua": "return {}",
        "retry_backoff": {"initial": "500ms"},
        "timeout": "90s",
        "limits": {"memory": 1000000},
    }
    assert once["nodes"][2] == {"id": "c", "workflow": "child", "timeout": 0.0015}
    assert "fail_fast" not in once
    assert parse_workflow(once).to_spec() == once


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_dump_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"wf{suffix}"
    dump_workflow(parse_workflow(FULL_SPEC), path)
    assert load_workflow(path).to_spec() == FULL_SPEC
    if suffix == ".json":
        assert json.loads(path.read_text()) == FULL_SPEC
    else:
        text = path.read_text()
        # Multi-line Lua stays readable as a literal block.
        assert "lua: |" in text
        assert yaml.safe_load(text) == FULL_SPEC


def test_api_built_dag_to_spec() -> None:
    dag = DAG("built", "0.1.0")
    dag.add_node(Node("a", [], LuaExecutor("return {}", max_instructions=10)))
    dag.add_node(Node("b", ["a"], PythonExecutor(dagengine_funcs_double())))
    dag.add_node(Node("c", ["b"], SubWorkflow("child", "~1.4.2"), retries=2, timeout=3))
    assert dag.to_spec() == {
        "id": "built",
        "version": "0.1.0",
        "nodes": [
            {"id": "a", "lua": "return {}", "limits": {"instructions": 10}},
            {"id": "b", "deps": ["a"], "python": "node_funcs:double"},
            {"id": "c", "deps": ["b"], "workflow": "child@~1.4.2", "retries": 2, "timeout": "3s"},
        ],
    }


def dagengine_funcs_double() -> Any:
    import node_funcs

    return node_funcs.double


def test_custom_executor_object_written_as_its_class() -> None:
    import node_funcs

    dag = DAG("w")
    dag.add_node(Node("a", [], node_funcs.Adder()))
    assert dag.to_spec()["nodes"][0] == {"id": "a", "python": "node_funcs:Adder"}


def test_lambda_and_closure_cannot_be_written() -> None:
    def local(ctx: Any) -> None:
        return None

    for fn in (lambda ctx: None, local):
        dag = DAG("w")
        dag.add_node(Node("a", [], PythonExecutor(fn)))
        with pytest.raises(SpecError, match=r"closures.*only work in-process") as info:
            dag.to_spec()
        assert info.value.path == "nodes[0].python"


def test_explicit_import_path_is_written() -> None:
    dag = DAG("w")
    dag.add_node(Node("a", [], PythonExecutor(lambda ctx: None, import_path="pkg.mod:fn")))
    assert dag.to_spec()["nodes"][0]["python"] == "pkg.mod:fn"


def test_dag_without_id_cannot_be_written() -> None:
    dag = DAG()
    dag.add_node(Node("a"))
    with pytest.raises(SpecError, match="needs an id"):
        dag.to_spec()


# --- bad input ----------------------------------------------------------------------------------

BAD_SPECS: list[tuple[str, Any, str, str | None]] = [
    # (case id, spec, message fragment, error path)
    ("not-a-mapping", ["id"], "must be a mapping, got list", None),
    ("missing-id", spec_with(id=None), "id: missing required key", "id"),
    ("id-type", spec_with(id=5), "id: expected a string, got int 5", "id"),
    ("id-chars", spec_with(id="a b"), "invalid workflow id", "id"),
    ("missing-nodes", spec_with(nodes=None), "nodes: missing required key", "nodes"),
    ("nodes-type", spec_with(nodes={"a": 1}), "nodes: expected a list of nodes", "nodes"),
    ("nodes-empty", spec_with(nodes=[]), "at least one node", "nodes"),
    ("node-type", spec_with(nodes=["a"]), "nodes[0]: expected a mapping", "nodes[0]"),
    ("unknown-top-key", spec_with(nodez=[]), "nodez: unknown key (did you mean 'nodes'?)", "nodez"),
    ("unknown-key-no-hint", spec_with(colour="red"), "colour: unknown key", "colour"),
    (
        "unknown-node-key",
        node_spec(noop=True, retires=3),
        "nodes[0].retires: unknown key (did you mean 'retries'?)",
        "nodes[0].retires",
    ),
    (
        "unknown-executor-kind",
        node_spec(shell="ls"),
        "nodes[0].shell: unknown key (not an executor kind; "
        "use one of lua, python, workflow, noop)",
        "nodes[0].shell",
    ),
    ("no-executor", node_spec(), "has no executor", "nodes[0]"),
    ("two-executors", node_spec(noop=True, lua="return {}"), "several executors", "nodes[0]"),
    ("noop-false", node_spec(noop=False), "nodes[0].noop: must be true", "nodes[0].noop"),
    ("node-id-type", node_spec(id=3, noop=True), "nodes[0].id: expected a string", "nodes[0].id"),
    ("node-id-empty", node_spec(id="", noop=True), "must not be empty", "nodes[0].id"),
    ("deps-string", node_spec(noop=True, deps="b"), "expected a list of node ids", "nodes[0].deps"),
    ("deps-item", node_spec(noop=True, deps=[1]), "nodes[0].deps[0]: expected", "nodes[0].deps[0]"),
    ("deps-repeated", node_spec(noop=True, deps=["b", "b"]), "'b' more than once", "nodes[0].deps"),
    (
        "retries-str",
        node_spec(noop=True, retries="3"),
        "expected a non-negative",
        "nodes[0].retries",
    ),
    ("retries-bool", node_spec(noop=True, retries=True), "got bool", "nodes[0].retries"),
    ("retries-neg", node_spec(noop=True, retries=-1), "must be >= 0", "nodes[0].retries"),
    ("lua-type", node_spec(lua=5), "nodes[0].lua: expected Lua source", "nodes[0].lua"),
    ("python-type", node_spec(python=["x"]), "expected an import path", "nodes[0].python"),
    (
        "fail-fast-type",
        spec_with(fail_fast="yes"),
        "fail_fast: expected true or false",
        "fail_fast",
    ),
    ("max-parallel-0", spec_with(max_parallel=0), "must be a positive integer", "max_parallel"),
    ("max-parallel-float", spec_with(max_parallel=1.5), "expected a positive", "max_parallel"),
    ("description-type", spec_with(description=1), "expected a string", "description"),
    # durations
    (
        "duration-word",
        node_spec(noop=True, timeout="10 sec"),
        "invalid duration",
        "nodes[0].timeout",
    ),
    ("duration-neg", node_spec(noop=True, timeout="-5s"), "invalid duration", "nodes[0].timeout"),
    ("duration-unit", node_spec(noop=True, timeout="5x"), "invalid duration", "nodes[0].timeout"),
    (
        "duration-order",
        node_spec(noop=True, timeout="30s1m"),
        "invalid duration",
        "nodes[0].timeout",
    ),
    ("duration-zero", node_spec(noop=True, timeout=0), "positive duration", "nodes[0].timeout"),
    ("duration-list", node_spec(noop=True, timeout=[1]), "got list", "nodes[0].timeout"),
    ("duration-negnum", spec_with(timeout=-1), "non-negative", "timeout"),
    (
        "backoff-key",
        node_spec(noop=True, retry_backoff={"inital": 1}),
        "retry_backoff.inital: unknown key (did you mean 'initial'?)",
        "nodes[0].retry_backoff.inital",
    ),
    (
        "backoff-factor",
        node_spec(noop=True, retry_backoff={"factor": 0.5}),
        "must be >= 1",
        "nodes[0].retry_backoff.factor",
    ),
    (
        "backoff-initial",
        node_spec(noop=True, retry_backoff={"initial": "soon"}),
        "invalid duration",
        "nodes[0].retry_backoff.initial",
    ),
    (
        "backoff-type",
        node_spec(noop=True, retry_backoff=2),
        "expected a mapping",
        "nodes[0].retry_backoff",
    ),
    # versions and ranges
    ("semver-short", spec_with(version="1.2"), "invalid version '1.2'", "version"),
    ("semver-v", spec_with(version="v1.2.0"), "invalid version", "version"),
    ("semver-4", spec_with(version="1.2.3.4"), "invalid version", "version"),
    ("semver-lead0", spec_with(version="01.2.3"), "invalid version", "version"),
    ("semver-float", spec_with(version=1.2), "expected a semver string", "version"),
    ("range-bad", node_spec(workflow="child@^one"), "invalid version range", "nodes[0].workflow"),
    ("range-empty", node_spec(workflow="child@"), "empty version range", "nodes[0].workflow"),
    (
        "range-op",
        node_spec(workflow="child@>=1.2,<<2"),
        "invalid version range",
        "nodes[0].workflow",
    ),
    (
        "workflow-id",
        node_spec(workflow="bad id@1"),
        "invalid workflow reference",
        "nodes[0].workflow",
    ),
    # limits
    (
        "limits-python",
        node_spec(python="node_funcs:const", limits={}),
        "lua nodes only",
        "nodes[0].limits",
    ),
    (
        "limits-key",
        node_spec(lua="return {}", limits={"mem": 1}),
        "limits.mem: unknown key (did you mean 'memory'?)",
        "nodes[0].limits.mem",
    ),
    (
        "limits-size",
        node_spec(lua="return {}", limits={"memory": "64XB"}),
        "invalid memory",
        "nodes[0].limits.memory",
    ),
    (
        "limits-instr",
        node_spec(lua="return {}", limits={"instructions": 0}),
        "must be positive",
        "nodes[0].limits.instructions",
    ),
    # numbers past what their field holds (the engine's wire types)
    (
        "retries-huge",
        node_spec(noop=True, retries=10**30),
        f"nodes[0].retries: {10**30} is out of range (0..4294967295)",
        "nodes[0].retries",
    ),
    (
        "retries-2**32",
        node_spec(noop=True, retries=2**32),
        "is out of range (0..4294967295)",
        "nodes[0].retries",
    ),
    (
        "instructions-huge",
        node_spec(lua="return {}", limits={"instructions": 2**63}),
        f"nodes[0].limits.instructions: {2**63} is out of range (1..{2**63 - 1})",
        "nodes[0].limits.instructions",
    ),
    (
        "memory-huge",
        node_spec(lua="return {}", limits={"memory": 10**30}),
        "is out of range",
        "nodes[0].limits.memory",
    ),
    (
        "memory-huge-str",
        node_spec(lua="return {}", limits={"memory": "100000000000GiB"}),
        "is out of range",
        "nodes[0].limits.memory",
    ),
    (
        "max-parallel-huge",
        spec_with(max_parallel=2**32),
        "max_parallel: 4294967296 is out of range (1..4294967295)",
        "max_parallel",
    ),
    (
        "timeout-huge-int",
        spec_with(timeout=10**400),
        "timeout: a 1329-bit integer is out of range (at most 1e+09 seconds)",
        "timeout",
    ),
    (
        "node-timeout-huge",
        node_spec(noop=True, timeout="9999999999h"),
        "is out of range (at most 1e+09 seconds)",
        "nodes[0].timeout",
    ),
    (
        "backoff-max-huge",
        node_spec(noop=True, retry_backoff={"max": 1e300}),
        "1e+300 is out of range",
        "nodes[0].retry_backoff.max",
    ),
    (
        "backoff-factor-huge",
        node_spec(noop=True, retry_backoff={"factor": 10**30}),
        "is out of range (1..1000)",
        "nodes[0].retry_backoff.factor",
    ),
    (
        "backoff-factor-inf",
        node_spec(noop=True, retry_backoff={"factor": float("inf")}),
        "inf is out of range (1..1000)",
        "nodes[0].retry_backoff.factor",
    ),
]


@pytest.mark.parametrize(
    ("spec", "fragment", "path"),
    [case[1:] for case in BAD_SPECS],
    ids=[case[0] for case in BAD_SPECS],
)
def test_bad_spec_raises_spec_error_naming_the_path(
    spec: Any, fragment: str, path: str | None
) -> None:
    with pytest.raises(SpecError) as info:
        parse_workflow(spec, source="wf.yaml")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("wf.yaml: ")
    assert info.value.path == path
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("spec", "fragment", "path"),
    [case[1:] for case in BAD_SPECS if isinstance(case[1], dict)],
    ids=[case[0] for case in BAD_SPECS if isinstance(case[1], dict)],
)
def test_a_spec_sent_to_an_engine_fails_as_it_fails_to_load(
    spec: dict[str, Any], fragment: str, path: str | None
) -> None:
    # One parser: the engine client refuses a bad spec with load_workflow's very message.
    with pytest.raises(SpecError) as loading:
        parse_workflow(spec)
    with pytest.raises(SpecError) as sending:
        workflow_to_proto(spec)
    assert str(sending.value) == str(loading.value)
    assert fragment in str(sending.value)
    assert sending.value.path == path


def test_parsing_imports_and_compiles_nothing_binding_does() -> None:
    spec = {
        "id": "w",
        "nodes": [
            {"id": "py", "python": "no_such_module_anywhere:f"},
            {"id": "lua", "deps": ["ghost"], "lua": "return {"},
        ],
    }
    model = spec_model.parse(spec)
    assert model.nodes[0].executor == spec_model.PythonSpec("no_such_module_anywhere:f")
    assert model.nodes[1].executor == spec_model.LuaSpec("return {")
    assert model.nodes[1].deps == ("ghost",)
    assert spec_model.to_dict(model) == spec
    with pytest.raises(ImportPathError, match="no_such_module_anywhere"):
        bind(model)


def test_the_model_round_trips_the_canonical_spec() -> None:
    model = spec_model.parse(FULL_SPEC)
    assert spec_model.to_dict(model) == FULL_SPEC
    assert workflow_model(bind(model)) == model


def test_cycle_error_names_the_cycle() -> None:
    spec = {
        "id": "w",
        "nodes": [
            {"id": "start", "noop": True},
            {"id": "a", "deps": ["start", "c"], "noop": True},
            {"id": "b", "deps": ["a"], "noop": True},
            {"id": "c", "deps": ["b"], "noop": True},
        ],
    }
    with pytest.raises(CycleError) as info:
        parse_workflow(spec)
    cycle = info.value.cycle
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert " -> ".join(cycle) in str(info.value)
    deps = {n["id"]: n.get("deps", []) for n in spec["nodes"]}
    # Each step of the reported path is a real edge (parent -> child).
    for parent, child in itertools.pairwise(cycle):
        assert parent in deps[child]


def test_missing_dependency_names_node_and_dependency() -> None:
    spec = {"id": "w", "nodes": [{"id": "a", "deps": ["ghost"], "noop": True}]}
    with pytest.raises(UnknownDependencyError) as info:
        parse_workflow(spec)
    assert (info.value.node_id, info.value.dependency) == ("a", "ghost")
    assert "ghost" in str(info.value)
    assert "a" in str(info.value)


def test_self_dependency() -> None:
    with pytest.raises(SelfDependencyError) as info:
        parse_workflow({"id": "w", "nodes": [{"id": "a", "deps": ["a"], "noop": True}]})
    assert info.value.node_id == "a"


def test_duplicate_node_id() -> None:
    spec = {"id": "w", "nodes": [{"id": "a", "noop": True}, {"id": "a", "noop": True}]}
    with pytest.raises(DuplicateNodeError) as info:
        parse_workflow(spec)
    assert info.value.node_id == "a"
    assert "nodes[1].id" in str(info.value)
    assert "nodes[0]" in str(info.value)


def test_lua_syntax_error_reports_line_and_node() -> None:
    code = "local x = 1\nlocal y = 2\nreturn {x = }\n"
    spec = {"id": "w", "nodes": [{"id": "ok", "noop": True}, {"id": "bad", "lua": code}]}
    with pytest.raises(LuaSyntaxError) as info:
        parse_workflow(spec)
    assert info.value.node_id == "bad"
    assert info.value.line == 3
    assert "bad" in str(info.value)
    assert isinstance(info.value, ValidationError)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("node_funcs:missing", "has no attribute 'missing'"),
        ("node_funcs:Namespace.nope", "has no attribute 'nope'"),
        ("node_funcs", "expected 'package.module:function'"),
        ("node_funcs:double:x", "expected 'package.module:function'"),
        ("node_funcs:NOT_CALLABLE", "is a int, not a function"),
        ("node_funcs:NoExecute", "has no execute(ctx) method"),
    ],
)
def test_unresolvable_import_path(path: str, reason: str) -> None:
    with pytest.raises(ImportPathError) as info:
        parse_workflow(node_spec(python=path))
    assert info.value.node_id == "a"
    assert info.value.path == path
    assert reason in str(info.value)
    assert "node 'a'" in str(info.value)


def test_import_error_inside_module_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_mod_for_test.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportPathError, match="RuntimeError: broken on purpose"):
        parse_workflow(node_spec(python="broken_mod_for_test:fn"))


# --- files --------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_workflow(tmp_path / "nope.yaml")


def test_load_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "wf.txt"
    path.write_text("id: w\n")
    with pytest.raises(SpecError, match=r"unsupported workflow file extension '\.txt'"):
        load_workflow(path)


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("id: w\nnodes:\n  - id: a\n   noop: [\n")
    with pytest.raises(SpecError, match=r"wf\.yaml: invalid YAML at line \d+"):
        load_workflow(path)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("id: w\nnodes:\n  - id: a\n    noop: true\n    id: b\n")
    with pytest.raises(SpecError, match="line 5: duplicate key 'id'"):
        load_workflow(path)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text('{"id": "w",}')
    with pytest.raises(SpecError, match=r"invalid JSON at line 1"):
        load_workflow(path)


def test_errors_from_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(node_spec(noop=True, retires=1)))
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    assert str(info.value).startswith(f"{path}: nodes[0].retires: unknown key")


def test_limits_at_the_edge_of_their_range_are_accepted() -> None:
    spec = spec_with(max_parallel=2**32 - 1, timeout=1e9)
    spec["nodes"] = [
        {"id": "a", "noop": True, "retries": 2**32 - 1, "retry_backoff": {"factor": 1000}},
        {"id": "b", "lua": "return {}", "limits": {"instructions": 2**63 - 1}},
    ]
    dag = parse_workflow(spec)
    assert dag.nodes["a"].retries == 2**32 - 1
    assert dag.max_parallel == 2**32 - 1


def test_a_file_that_is_not_utf8_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_bytes(b"id: x\nnodes:\n  - id: \xff\xfe\n    noop: true\n")
    with pytest.raises(SpecError, match=r"wf.yaml: not UTF-8 text: byte 0xff at line 3"):
        load_workflow(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("open.json", '{"id": ' + "[" * 100_000),
        ("deep.yaml", "id: x\nnodes: " + "[" * 100_000 + "]" * 100_000),
        ("flow.yaml", "id: " + "{a: " * 100_000 + "1" + "}" * 100_000),
        # Block nesting (indentation) recurses in the parser too.
        ("block.yaml", "".join(" " * i + "a:\n" for i in range(3000)) + " " * 3000 + "b: 1\n"),
        # Past the limit, but far from the parsers' recursion limits.
        ("65.json", '{"id": "x", "nodes": ' + "[" * 65 + "]" * 65 + "}"),
    ],
)
def test_deep_nesting_is_a_spec_error_not_a_recursion_error(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=f"{name}: nested deeper than 64 levels"):
        load_workflow(path)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("nan.json", '{"id": "x", "max_parallel": NaN, "nodes": []}', "NaN is not valid JSON"),
        ("digits.json", '{"id": "x", "max_parallel": ' + "9" * 5000 + "}", "invalid JSON"),
        ("digits.yaml", "id: x\nmax_parallel: " + "9" * 5000 + "\n", "invalid YAML"),
    ],
)
def test_unreadable_numbers_are_spec_errors(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=fragment):
        load_workflow(path)
