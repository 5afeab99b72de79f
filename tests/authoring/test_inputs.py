"""Typed inputs: the ``inputs:`` JSON Schema (checked, validated with defaults filled), the
schema a decorated workflow derives from its signature, and every door that applies it."""

from __future__ import annotations

import datetime as dt
import enum
import pickle
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import authoring_flows as flows
import httpx
import pytest
from dagengine import DAG, EngineClient, InputError, Orchestrator, SpecError, ValidationError
from dagengine.api import ServerThread, create_app
from dagengine.cli import main
from dagengine.inputs import check_schema, coerce_text, schema_from_signature, validate_inputs
from dagengine.triggers import HTTPTrigger

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "day": {"type": "string", "format": "date"},
        "factor": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "mode": {"enum": ["fast", "slow"], "default": "fast"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "at": {"type": ["string", "null"], "format": "date-time"},
        "opts": {
            "type": "object",
            "properties": {"depth": {"type": "number", "default": 2.5}},
            "additionalProperties": False,
        },
    },
    "required": ["day"],
}


# --- the schema -------------------------------------------------------------------------------


def test_a_schema_is_checked_once() -> None:
    assert check_schema(SCHEMA) == SCHEMA
    with pytest.raises(
        SpecError,
        match=r"inputs.properties.factor.minimun: unknown keyword \(did you mean 'minimum'\?\)",
    ):
        check_schema({"properties": {"factor": {"type": "integer", "minimun": 1}}})
    with pytest.raises(SpecError, match=r"inputs.properties.n.type: unknown type 'int'"):
        check_schema({"properties": {"n": {"type": "int"}}})
    with pytest.raises(SpecError, match=r"inputs.type: the inputs are an object"):
        check_schema({"type": "array"})
    with pytest.raises(
        SpecError,
        match=r"inputs.properties.n.default: the default does not match: default: "
        r"expected at least 1, got 0",
    ):
        check_schema({"properties": {"n": {"type": "integer", "minimum": 1, "default": 0}}})
    with pytest.raises(SpecError, match=r"inputs.properties.d.format: unsupported format 'time'"):
        check_schema({"properties": {"d": {"type": "string", "format": "time"}}})
    with pytest.raises(SpecError, match=r"inputs: expected a JSON Schema \(a mapping\), got array"):
        check_schema([1])
    with pytest.raises(SpecError, match=r"inputs.required: expected a list of property names"):
        check_schema({"required": "day"})


def test_valid_inputs_get_their_defaults() -> None:
    given = {"day": "2026-12-06", "opts": {}, "at": None, "extra": [1]}
    out = validate_inputs(SCHEMA, given)
    assert out == {
        "day": "2026-12-06",
        "factor": 1,
        "mode": "fast",
        "opts": {"depth": 2.5},
        "at": None,
        "extra": [1],
    }
    assert given == {"day": "2026-12-06", "opts": {}, "at": None, "extra": [1]}  # not changed
    assert validate_inputs(SCHEMA, {"day": "2026-12-06", "factor": 3.0})["factor"] == 3.0
    ok = "2026-12-06T09:30:00.5+01:00"
    assert validate_inputs(SCHEMA, {"day": "2026-12-06", "at": ok})["at"] == ok


def test_defaults_are_copies() -> None:
    schema = check_schema({"properties": {"xs": {"type": "array", "default": []}}})
    validate_inputs(schema, {})["xs"].append(1)
    assert validate_inputs(schema, {})["xs"] == []


def test_every_problem_is_named_with_its_path_and_expectation() -> None:
    bad = {
        "factor": "x",
        "mode": "medium",
        "tags": ["a", 2],
        "at": "2026-12-06 09:30",
        "opts": {"depth": True, "width": 3},
    }
    with pytest.raises(InputError) as info:
        validate_inputs(SCHEMA, bad)
    err = info.value
    assert isinstance(err, ValidationError)
    assert err.problems == [
        {"path": "inputs.day", "message": "required, missing"},
        {"path": "inputs.factor", "message": 'expected integer, got "x"'},
        {"path": "inputs.mode", "message": 'expected one of "fast", "slow", got "medium"'},
        {"path": "inputs.tags[1]", "message": "expected string, got 2"},
        {
            "path": "inputs.at",
            "message": "expected a date-time like '2026-12-06T09:30:00Z', got \"2026-12-06 09:30\"",
        },
        {"path": "inputs.opts.depth", "message": "expected number, got true"},
        {"path": "inputs.opts.width", "message": "unknown input (expected one of: depth)"},
    ]
    assert str(err).startswith("inputs.day: required, missing; inputs.factor: expected integer")
    clone = pickle.loads(pickle.dumps(err))
    assert clone.problems == err.problems


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "expected at least 1, got 0"),
        (11, "expected at most 10, got 11"),
        (True, "expected integer, got true"),
        (2.5, "expected integer, got 2.5"),
    ],
)
def test_integer_bounds_and_bools(value: object, problem: str) -> None:
    with pytest.raises(InputError, match="^inputs.factor: " + problem):
        validate_inputs(SCHEMA, {"day": "2026-12-06", "factor": value})


@pytest.mark.parametrize("day", ["2026-02-30", "2026-1-6", "06/12/2026", "2026-12-06T00:00:00Z"])
def test_dates_are_checked(day: str) -> None:
    with pytest.raises(InputError, match=r"inputs.day: expected a date like '2026-12-06'"):
        validate_inputs(SCHEMA, {"day": day})


# --- derived from a signature -----------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_the_schema_of_a_signature() -> None:
    def fn(
        name: str,
        count: int,
        ratio: float,
        flag: bool,
        day: dt.date,
        at: dt.datetime,
        tags: list[str],
        weights: dict[str, float],
        level: Literal["low", "high"],
        color: Color,
        maybe: Optional[int],  # noqa: UP045 - the old spelling must work too
        either: int | str,
        anything: Any,
        untyped,  # type: ignore[no-untyped-def]
        noted: Annotated[int, "meta"] = 3,
        rows: tuple[int, ...] = (1, 2),
        picked: Color = Color.BLUE,
    ) -> None:
        return None

    schema = schema_from_signature(fn, owner="fn")
    props = schema["properties"]
    assert props == {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "weights": {"type": "object", "additionalProperties": {"type": "number"}},
        "level": {"type": "string", "enum": ["low", "high"]},
        "color": {"type": "string", "enum": ["red", "blue"]},
        "maybe": {"type": ["integer", "null"]},
        "either": {"type": ["integer", "string"]},
        "anything": {},
        "untyped": {},
        "noted": {"type": "integer", "default": 3},
        "rows": {"type": "array", "items": {"type": "integer"}, "default": [1, 2]},
        "picked": {"type": "string", "enum": ["red", "blue"], "default": "blue"},
    }
    assert schema["required"] == list(props)[:14]
    assert schema["type"] == "object"


def test_hints_and_defaults_without_a_schema_are_refused() -> None:
    def bad_hint(x: set[int]) -> None:
        return None

    def bad_default(x: object = object()) -> None:
        return None

    def bad_keys(x: dict[int, str]) -> None:
        return None

    with pytest.raises(TypeError, match=r"workflow w: parameter x: type hint set\[int\] has no"):
        schema_from_signature(bad_hint, owner="w")
    with pytest.raises(TypeError, match=r"workflow w: parameter x: the default is not JSON data"):
        schema_from_signature(bad_default, owner="w")
    with pytest.raises(TypeError, match=r"workflow w: parameter x: object keys are strings"):
        schema_from_signature(bad_keys, owner="w")


def test_a_decorated_workflow_has_its_signatures_schema() -> None:
    assert flows.numbers.inputs == {
        "type": "object",
        "properties": {"day": {"type": "string"}, "factor": {"type": "integer", "default": 1}},
        "required": ["day"],
    }
    assert flows.numbers.to_spec()["inputs"] == flows.numbers.inputs
    result = flows.numbers.run({"day": "d"})  # factor: the parameter's default
    assert flows.numbers.output_of(result) == {"sum": 14}
    with pytest.raises(
        InputError,
        match=r'^inputs.day: expected string, got 3; inputs.factor: expected integer, got "x"$',
    ):
        flows.numbers.run({"day": 3, "factor": "x"})


# --- the doors --------------------------------------------------------------------------------

SPEC: dict[str, Any] = {
    "id": "typed",
    "version": "1.0.0",
    "inputs": {
        "type": "object",
        "properties": {
            "factor": {"type": "integer", "default": 2},
            "code": {"type": "string", "default": "none"},
        },
    },
    "nodes": [{"id": "a", "lua": "return {v = inputs.factor * 10, code = inputs.code}"}],
}


def test_a_spec_carries_its_schema_and_dag_run_applies_it() -> None:
    dag = DAG.from_spec(SPEC)
    assert dag.inputs == SPEC["inputs"]
    assert dag.to_spec() == SPEC
    assert dag.run().outputs["a"] == {"v": 20, "code": "none"}
    with pytest.raises(InputError, match=r'^inputs.factor: expected integer, got "x"$'):
        dag.run({"factor": "x"})
    with pytest.raises(SpecError, match=r"^inputs.properties.factor.type: unknown type 'int'"):
        DAG.from_spec({**SPEC, "inputs": {"properties": {"factor": {"type": "int"}}}})
    with pytest.raises(SpecError, match=r"inputs.defualt: unknown keyword"):
        DAG("x", inputs={"defualt": 1})


def test_the_engine_client_checks_before_sending(engine: str) -> None:
    with EngineClient(engine, timeout=30) as client:
        with pytest.raises(InputError, match=r"^inputs.day: required, missing$"):
            client.run(flows.numbers, {"factor": 2})
        with pytest.raises(InputError, match=r'inputs.factor: expected integer, got "x"'):
            client.run(SPEC, b'{"factor": "x"}')
        result = client.run(flows.numbers, {"day": "d"})  # the default travels filled in
        assert flows.numbers.output_of(result) == {"sum": 14}
        assert client.run(SPEC).outputs["a"] == {"v": 20, "code": "none"}


@pytest.fixture(scope="module")
def served() -> Any:
    orch = Orchestrator(store=":memory:")
    orch.register_workflow(flows.numbers)
    orch.register_workflow("typed", "1.0.0", SPEC)
    hook = HTTPTrigger("numbers-hook", "/hooks/numbers", "numbers", mode="sync")
    server = ServerThread(create_app(orch, triggers=[hook])).start()
    hook.start(orch)
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        yield orch, client
    finally:
        client.close()
        hook.stop()
        server.stop()
        orch.stop()


def test_the_orchestrator_checks_and_fills_inputs(served: Any) -> None:
    orch, _ = served
    with pytest.raises(InputError, match=r"^inputs.day: required, missing$"):
        orch.execute_workflow("numbers", {})
    result = orch.execute_workflow("numbers", {"day": "d"})
    assert flows.numbers.output_of(result) == {"sum": 14}
    record = orch.store.get_run(result.run_id)
    assert record is not None
    assert record.inputs == {"day": "d", "factor": 1}  # stored as the run got them


def test_rest_answers_422_with_the_problems_and_shows_the_schema(served: Any) -> None:
    _, client = served
    response = client.post("/workflows/numbers/runs", json={"inputs": {"factor": "x"}})
    assert response.status_code == 422
    assert response.json() == {
        "error": 'inputs.day: required, missing; inputs.factor: expected integer, got "x"',
        "problems": [
            {"path": "inputs.day", "message": "required, missing"},
            {"path": "inputs.factor", "message": 'expected integer, got "x"'},
        ],
    }
    ok = client.post("/workflows/numbers/runs", json={"inputs": {"day": "d"}, "wait": True})
    assert ok.status_code == 200
    assert ok.json()["outputs"]["total"] == {"sum": 14}
    workflow = client.get("/workflows/numbers").json()
    assert workflow["inputs"] == flows.numbers.inputs
    assert workflow["versions"][0]["inputs"] == flows.numbers.inputs
    assert client.get("/workflows/typed").json()["inputs"] == SPEC["inputs"]


def test_an_http_trigger_answers_422_too(served: Any) -> None:
    _, client = served
    response = client.post("/hooks/numbers", json={"inputs": {"day": 3}})
    assert response.status_code == 422
    assert response.json()["problems"] == [
        {"path": "inputs.day", "message": "expected string, got 3"}
    ]
    assert client.post("/hooks/numbers", json={"inputs": {"day": "d"}}).status_code == 200


def test_the_cli_coerces_by_the_schema_and_exits_2_on_bad_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    spec = tmp_path / "typed.json"
    spec.write_text(json.dumps(SPEC))
    assert main(["run", str(spec), "--input", "code=007", "--input", "factor=3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodes"]["a"]["output"] == {"v": 30, "code": "007"}
    assert main(["run", str(spec), "--input", "factor=x"]) == 2
    assert 'inputs.factor: expected integer, got "x"' in capsys.readouterr().err


def test_cli_submit_reads_inputs_by_the_servers_schema(
    served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    _, client = served
    url = str(client.base_url)
    # day=2026 would be the number 2026 without the schema (then a 422): it is the string.
    argv = ["submit", "numbers", "-i", "day=2026", "-i", "factor=3", "--wait", "--url", url]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["total"] == {"sum": 42}
    bad = ["submit", "numbers", "-i", "day=d", "-i", "factor=x", "--url", url]
    assert main(bad) == 2
    assert 'HTTP 422: inputs.factor: expected integer, got "x"' in capsys.readouterr().err
    # An unknown workflow: no schema to read by; the submit itself says what is wrong.
    assert main(["submit", "nope", "-i", "a=1", "--url", url]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_coerce_text() -> None:
    schema = check_schema(
        {
            "properties": {
                "s": {"type": "string"},
                "i": {"type": "integer"},
                "n": {"type": "number"},
                "b": {"type": "boolean"},
                "o": {"type": ["string", "null"]},
            }
        }
    )
    assert coerce_text(schema, "s", "007") == "007"
    assert coerce_text(schema, "i", "3") == 3
    assert coerce_text(schema, "i", "x") == "x"  # left for validation to report
    assert coerce_text(schema, "n", "2") == 2
    assert coerce_text(schema, "n", "2.5") == 2.5
    assert coerce_text(schema, "b", "true") is True
    assert coerce_text(schema, "o", "null") is None
    assert coerce_text(schema, "other", "[1]") == [1]
    assert coerce_text(None, "x", "hello") == "hello"
