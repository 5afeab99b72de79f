"""The ``dagengine`` command line: output, exit codes 0/1/2, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagengine.cli import main, parse_input_value

PIPELINE = "examples/pipeline.yaml"


def write_spec(tmp_path: Path, spec: dict[str, Any], name: str = "wf.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def assert_one_line_error(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dagengine: error: "), err
    assert fragment in lines[0]
    assert "Traceback" not in err


# --- run ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("in_repo_root")
def test_run_example_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", PIPELINE, "--input", "factor=3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    # Progress (not a terminal: one line per event) then the result table.
    assert "node_started" in out
    assert "node_succeeded  load" in out
    assert "succeeded in" in out
    for node in ("extract", "scale", "stats", "load"):
        assert node in out


@pytest.mark.usefixtures("in_repo_root")
def test_run_json_prints_only_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", PIPELINE, "--input", "factor=3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    load = result["outputs"]["load"]
    # sum(i*i for i in 1..10) = 385, times the factor.
    assert load["total"] == 385 * 3
    assert load["factor"] == 3
    assert result["outputs"]["stats"]["count"] == 10
    assert set(result["nodes"]) == {"extract", "scale", "stats", "load"}


@pytest.mark.usefixtures("in_repo_root")
def test_inputs_json_and_input_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text('{"factor": 2}')
    assert main(["run", PIPELINE, "--inputs-json", f"@{inputs}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["load"]["total"] == 385 * 2
    assert (
        main(["run", PIPELINE, "--inputs-json", '{"factor": 2}', "-i", "factor=5", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["outputs"]["load"]["total"] == 385 * 5


def test_input_values_parse_as_json_else_string() -> None:
    assert parse_input_value("3") == 3
    assert parse_input_value("true") is True
    assert parse_input_value('{"a": [1]}') == {"a": [1]}
    assert parse_input_value("hello") == "hello"
    assert parse_input_value("") == ""
    assert parse_input_value("a=b") == "a=b"


def test_run_failed_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "id": "failing",
        "nodes": [
            {"id": "bad", "lua": 'error("deliberate")'},
            {"id": "after", "deps": ["bad"], "noop": True},
            {"id": "other", "noop": True},
        ],
    }
    code = main(["run", write_spec(tmp_path, spec)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "failed" in out
    assert "skipped" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "run failed at node 'bad'" in lines[0]
    assert "deliberate" in lines[0]


def test_run_failed_json_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"id": "failing", "nodes": [{"id": "bad", "lua": "return 5"}]}
    assert main(["run", write_spec(tmp_path, spec), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "failed"
    assert result["nodes"]["bad"]["error"]["type"] == "LuaBadReturn"


def test_run_timeout_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "id": "slow",
        "nodes": [{"id": "loop", "lua": "while true do end", "limits": {"instructions": 10**15}}],
    }
    assert main(["run", write_spec(tmp_path, spec), "--timeout", "200ms", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "failed"
    assert result["error"]["type"] == "RunTimeout"


def test_fail_fast_and_max_parallel_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {"id": "w", "nodes": [{"id": "a", "noop": True}, {"id": "b", "noop": True}]}
    assert (
        main(["run", write_spec(tmp_path, spec), "--fail-fast", "--max-parallel", "1", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"


# --- validate / graph ---------------------------------------------------------------------------


@pytest.mark.usefixtures("in_repo_root")
def test_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", PIPELINE]) == 0
    out = capsys.readouterr().out
    assert out == "ok: example-pipeline 1.0.0: 4 nodes, 4 edges, 3 levels\n"


@pytest.mark.usefixtures("in_repo_root")
def test_graph_levels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", PIPELINE]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["level 0: extract", "level 1: scale, stats", "level 2: load"]


@pytest.mark.usefixtures("in_repo_root")
def test_graph_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", PIPELINE, "--dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "example-pipeline" {')
    assert '"extract" -> "scale";' in out
    assert '"stats" -> "load";' in out
    assert out.count("->") == 4
    assert out.rstrip().endswith("}")


# --- bad input: exit 2, one line, no traceback --------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (
            {"id": "w", "nodes": [{"id": "a", "noop": True, "retires": 2}]},
            "did you mean 'retries'?",
        ),
        ({"id": "w", "nodes": [{"id": "a", "shell": "ls"}]}, "not an executor kind"),
        (
            {"id": "w", "version": "1.0", "nodes": [{"id": "a", "noop": True}]},
            "invalid version '1.0'",
        ),
        (
            {"id": "w", "nodes": [{"id": "a", "noop": True, "timeout": "5 minutes"}]},
            "invalid duration",
        ),
        (
            {
                "id": "w",
                "nodes": [
                    {"id": "a", "deps": ["b"], "noop": True},
                    {"id": "b", "deps": ["a"], "noop": True},
                ],
            },
            "cycle",
        ),
        ({"id": "w", "nodes": [{"id": "a", "deps": ["ghost"], "noop": True}]}, "ghost"),
        ({"id": "w", "nodes": [{"id": "a", "lua": "return {"}]}, "Lua syntax error"),
        ({"id": "w", "nodes": [{"id": "a", "python": "nowhere_xyz.mod:fn"}]}, "nowhere_xyz"),
    ],
    ids=[
        "unknown-key",
        "executor-kind",
        "semver",
        "duration",
        "cycle",
        "missing-dep",
        "lua",
        "import",
    ],
)
@pytest.mark.parametrize("command", ["run", "validate", "graph"])
def test_bad_spec_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec: dict[str, Any],
    fragment: str,
    command: str,
) -> None:
    assert main([command, write_spec(tmp_path, spec)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "missing.yaml"], "missing.yaml: No such file or directory"),
        (["validate", "missing.yaml"], "No such file"),
        (["run", "{spec}", "--input", "noequals"], "bad --input 'noequals': expected NAME=VALUE"),
        (["run", "{spec}", "--input", "=3"], "expected NAME=VALUE"),
        (["run", "{spec}", "--inputs-json", "[1]"], "expected a JSON object"),
        (["run", "{spec}", "--inputs-json", "{bad"], "invalid JSON"),
        (
            ["run", "{spec}", "--inputs-json", "@/nonexistent/inputs.json"],
            "--inputs-json @/nonexistent",
        ),
        (["run", "{spec}", "--timeout", "soon"], "argument --timeout"),
        (["run", "{spec}", "--max-parallel", "0"], "argument --max-parallel"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["run"], "required: file"),
        (["run", "{dir}"], "Is a directory"),
        (["run", "{txt}"], "unsupported workflow file extension"),
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    spec = write_spec(tmp_path, {"id": "w", "nodes": [{"id": "a", "noop": True}]})
    txt = tmp_path / "wf.txt"
    txt.write_text("id: w")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    places = {"{spec}": spec, "{dir}": str(directory), "{txt}": str(txt)}
    argv = [places.get(a, a) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, fragment)


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["run", "{spec}", "--input", "a=\udcff"],
            "bad --input 'a': inputs.a: string is not valid UTF-8 (lone surrogate \\udcff)",
        ),
        (
            ["run", "{spec}", "--input", "\udcff=1"],
            "is not valid UTF-8 (lone surrogate \\udcff)",
        ),
        (
            ["run", "{spec}", "--inputs-json", '{"a": {"b": "\\udcff"}}'],
            "--inputs-json: inputs.a.b: string is not valid UTF-8",
        ),
        (["run", "{spec}", "--inputs-json", '{"a": NaN}'], "NaN is not valid JSON"),
        (["run", "{spec}", "--inputs-json", '{"a": [Infinity]}'], "Infinity is not valid JSON"),
        (["run", "{spec}", "--inputs-json", '{"a": 1e999}'], "inputs.a: inf is not a JSON number"),
        (
            ["run", "{spec}", "--inputs-json", '{"a": [1, 9223372036854775808]}'],
            "inputs.a[1]: integer 9223372036854775808 is out of range",
        ),
        (
            ["run", "{spec}", "--input", "n=-9223372036854775809"],
            "inputs.n: integer -9223372036854775809 is out of range",
        ),
        (["run", "{spec}", "--inputs-json", DEEP], "--inputs-json: nested deeper than 64 levels"),
        (["run", "{spec}", "--inputs-json", "@{deep}"], "--inputs-json: nested deeper than 64"),
        (["run", "{spec}", "--input", "a=" + DEEP], "bad --input 'a': nested deeper than 64"),
        (
            ["run", "{spec}", "--inputs-json", '{"a": ' + "[" * 64 + "]" * 64 + "}"],
            "nested deeper than 64 levels",
        ),
        (["run", "{spec}", "--inputs-json", "@{latin1}"], "not UTF-8 text"),
        (
            ["submit", "wf", "--input", "a=\udcff", "--url", "http://127.0.0.1:9"],
            "inputs.a: string is not valid UTF-8",
        ),
        (
            ["submit", "wf", "--inputs-json", '{"a": NaN}', "--url", "http://127.0.0.1:9"],
            "NaN is not valid JSON",
        ),
        (["run", "{spec}", "--max-parallel", str(10**30)], "out of range (1..4294967295)"),
        (["run", "{spec}", "--timeout", "1e300"], "argument --timeout: 1e300 is out of range"),
        (["runs", "--limit", str(2**64)], "argument --limit"),
        (["validate", "{big_retries}"], "nodes[0].retries: 10000000000000000000000000000000"),
        (["run", "{big_retries}"], "is out of range (0..4294967295)"),
        (
            ["validate", "{big_instructions}"],
            "nodes[0].limits.instructions: 1000000000000000000000",
        ),
        (["validate", "{latin1_spec}"], "not UTF-8 text: byte 0xe9 at line 3"),
        (["validate", "{deep_yaml}"], "nested deeper than 64 levels"),
        (["graph", "{deep_json}"], "nested deeper than 64 levels"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    files = {
        "{spec}": ("wf.yaml", "id: w\nnodes:\n  - id: a\n    noop: true\n"),
        "{big_retries}": ("big.yaml", "id: w\nnodes:\n  - {id: a, noop: true, retries: 1e31}\n"),
        "{big_instructions}": (
            "instr.json",
            json.dumps(
                {"id": "w", "nodes": [{"id": "a", "lua": "x", "limits": {"instructions": 10**21}}]}
            ),
        ),
        "{deep_yaml}": ("deep.yaml", "id: w\nnodes: " + DEEP),
        "{deep_json}": ("deep.json", '{"id": "w", "nodes": ' + DEEP + "}"),
        "{deep}": ("deep.json", '{"a": ' + DEEP + "}"),
    }
    places = {}
    for marker, (name, text) in files.items():
        path = tmp_path / name
        path.write_text(text.replace("1e31", str(10**31)))
        places[marker] = str(path)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"a": "caf\u00e9"}'.encode("latin-1"))
    places["{latin1}"] = str(latin1)
    latin1_spec = tmp_path / "latin1.yaml"
    latin1_spec.write_bytes("id: w\nnodes:\n  - {id: caf\u00e9, noop: true}\n".encode("latin-1"))
    places["{latin1_spec}"] = str(latin1_spec)
    for marker, path_text in places.items():
        argv = [a.replace(marker, path_text) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, fragment)


def test_a_lone_surrogate_on_the_real_command_line_exits_2(tmp_path: Path) -> None:
    # A byte that is not UTF-8 in argv reaches Python as a lone surrogate (surrogateescape).
    spec = write_spec(tmp_path, {"id": "w", "nodes": [{"id": "a", "noop": True}]})
    proc = subprocess.run(
        [sys.executable, "-m", "dagengine", "run", spec.encode(), b"--input", b"a=\xff"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "inputs.a: string is not valid UTF-8 (lone surrogate")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "validate", "graph"):
        assert command in out


def test_python_nodes_resolve_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = tmp_path / "cli_pkg_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text("def hello(ctx):\n    return {'hello': ctx.inputs['name']}\n")
    spec = write_spec(
        tmp_path, {"id": "w", "nodes": [{"id": "h", "python": "cli_pkg_for_test.tasks:hello"}]}
    )
    monkeypatch.chdir(tmp_path)
    # main() puts the working directory on sys.path; undo that after the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["run", spec, "--input", "name=world", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["h"] == {"hello": "world"}


@pytest.mark.integration
def test_python_m_dagengine_subprocess(in_repo_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dagengine", "run", PIPELINE, "--input", "factor=3", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=in_repo_root,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"]["load"]["total"] == 385 * 3
    bad = subprocess.run(
        [sys.executable, "-m", "dagengine", "validate", "does-not-exist.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=in_repo_root,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("dagengine: error: ")


# --- the engine (`dagengine engine`): the gRPC door ---------------------------------------------


@pytest.fixture(scope="module")
def engine_client() -> Iterator[Any]:
    from dagengine.engine import EngineClient
    from processes import EngineProcess

    engine = EngineProcess("--engine-id", "doors")
    try:
        with EngineClient(engine.address, timeout=30) as client:
            yield client
    finally:
        engine.kill()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("inputs_json", "message"),
    [
        (b'{"a": 9223372036854775808}', "inputs_json: inputs.a: integer 9223372036854775808 is"),
        (b'{"a": {"b": [1, 1e19]}}', "inputs_json: inputs.a.b[1]: 1e19 is out of range"),
        (b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", "nested deeper than 64 levels"),
        (b'{"a": "\\udcff"}', "inputs_json: not valid JSON"),
        (b'{"a": NaN}', "inputs_json: not valid JSON"),
    ],
)
def test_the_engine_refuses_inputs_past_the_limits_with_invalid_argument(
    engine_client: Any, inputs_json: bytes, message: str
) -> None:
    from dagengine.exceptions import InvalidRequest

    spec = {"id": "w", "nodes": [{"id": "a", "lua": "return {n = inputs.n}"}]}
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        engine_client.run(spec, inputs_json)
    # At the limits: accepted, and the engine still serves.
    result = engine_client.run(spec, b'{"n": 9223372036854775807, "f": -9.2e18}')
    assert result.ok, result
    assert result.outputs["a"] == {"n": 2**63 - 1}
