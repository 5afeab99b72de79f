"""Run inputs that are not JSON data (lone surrogates, integers past 64 bits, NaN, nesting past
the limit) are refused at the HTTP door with a 400 naming the path, numbers too big for their
field are 400s, and the server is as strict as its OpenAPI document (unknown keys, nulls,
the timeout's range). A hypothesis pass throws arbitrary near-JSON at a real server: every
answer is 2xx or 400, and the server keeps serving ordinary requests after each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from dagengine._jsondata import MAX_DEPTH
from dagengine.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Served, serve, shutdown

pytestmark = pytest.mark.integration

RUNS = "/workflows/lua3/runs"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    # A server of its own: the fuzz pass below starts many runs.
    s = serve(max_body_bytes=256 * 1024)
    yield s
    shutdown(s)


def post_raw(served: Served, path: str, text: str, **headers: str) -> Any:
    return served.client.post(
        path, content=text.encode(), headers={"Content-Type": "application/json", **headers}
    )


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def assert_still_serving(served: Served) -> None:
    r = served.client.post(RUNS, json={"inputs": {"n": 2}})
    assert r.status_code == 202, r.text
    r = served.client.get("/runs", params={"limit": 1})
    assert r.status_code == 200, r.text
    assert r.json()["runs"]


# -- inputs ----------------------------------------------------------------------------------

BAD_INPUTS = [
    ('{"a": "\\udcff"}', "inputs.a: string is not valid UTF-8 (lone surrogate \\udcff)"),
    ('{"\\ud800": 1}', "inputs: key '\\ud800' is not valid UTF-8 (lone surrogate \\ud800)"),
    ('{"a": {"x y": ["ok", "\\udc80"]}}', "inputs.a['x y'][1]: string is not valid UTF-8"),
    ('{"a": 9223372036854775808}', "inputs.a: integer 9223372036854775808 is out of range"),
    ('{"a": [-9223372036854775809]}', "inputs.a[0]: integer -9223372036854775809 is out of"),
    ('{"a": 1e400}', "inputs.a: inf is not a JSON number"),
    # One rule whatever the spelling: 1e19 is the number 10000000000000000000.
    ('{"a": [0.5, 1e19]}', "inputs.a[1]: 1e+19 is out of range (numbers must be in the signed"),
    ('{"a": NaN}', "NaN is not valid JSON"),
    ('{"a": -Infinity}', "-Infinity is not valid JSON"),
    ('{"a": ' + nested(MAX_DEPTH) + "}", f"nested deeper than {MAX_DEPTH} levels"),
    ('{"a": ' + nested(100_000) + "}", "not valid JSON"),
    ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
]


@pytest.mark.parametrize(("inputs", "message"), BAD_INPUTS)
@pytest.mark.parametrize("path", [RUNS, "/hooks/async", "/hooks/sync"])
def test_inputs_that_are_not_json_data_are_400_naming_the_path(
    served: Served, path: str, inputs: str, message: str
) -> None:
    before = len(served.orch.store.list_runs(limit=100_000))
    r = post_raw(served, path, '{"inputs": ' + inputs + "}")
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert len(served.orch.store.list_runs(limit=100_000)) == before
    assert_still_serving(served)


def test_inputs_at_the_limits_are_accepted(served: Served) -> None:
    inputs = (
        '{"max": 9223372036854775807, "min": -9223372036854775808, "deep": '
        + nested(MAX_DEPTH - 1)
        + ', "text": "\\ud83d\\ude00 \\u00fc"}'
    )
    r = post_raw(served, RUNS, '{"inputs": ' + inputs + ', "wait": true}')
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    stored = served.client.get(f"/runs/{r.json()['run_id']}").json()["inputs"]
    assert stored["max"] == 2**63 - 1
    assert stored["text"] == "\U0001f600 ü"


def test_the_orchestrator_refuses_such_inputs_before_storing_anything(served: Served) -> None:
    before = len(served.orch.store.list_runs(limit=100_000))
    with pytest.raises(ValidationError, match=r"inputs\.a: string is not valid UTF-8"):
        served.orch.execute_workflow("lua3", {"a": "\udcff"}, wait=False)
    with pytest.raises(ValidationError, match=r"inputs\.b: integer 18446744073709551616"):
        served.orch.execute_workflow("lua3", {"b": 2**64})
    assert len(served.orch.store.list_runs(limit=100_000)) == before


# -- the run request: as strict as its schema ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": None}, "'inputs' must be an object, got null"),
        ({"timeout": None}, "'timeout' must be a number of seconds, got null"),
        ({"version": None}, "'version' must be a string, got null"),
        ({"wait": None}, "'wait' must be a boolean, got null"),
        ({"key": None}, "'key' must be a string, got null"),
        ({"inputs": {}, "timout": 5}, "unknown key 'timout'"),
        ({"input": {"n": 1}}, "unknown key 'input'"),
        ({"timeout": 1e9 + 1}, "'timeout' must be a number of seconds in (0, 1e+09]"),
        ({"timeout": 10**30}, "'timeout' must be a number of seconds in (0, 1e+09]"),
        ({"timeout": 0}, "'timeout' must be a number of seconds in (0, 1e+09]"),
        ({"key": "\udcff"}, "key: string is not valid UTF-8"),
        ({"version": "\udcff"}, "version: string is not valid UTF-8"),
    ],
)
def test_run_requests_outside_the_schema_are_400(
    served: Served, body: dict[str, Any], message: str
) -> None:
    r = post_raw(served, RUNS, json.dumps(body))
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_the_largest_timeout_of_the_schema_is_accepted(served: Served) -> None:
    doc = served.client.get("/openapi.json").json()
    timeout = doc["components"]["schemas"]["RunRequest"]["properties"]["timeout"]
    r = served.client.post(RUNS, json={"timeout": timeout["maximum"], "wait": True})
    assert r.status_code == 200, r.text


def test_hook_inputs_null_is_400(served: Served) -> None:
    r = served.client.post("/hooks/async", json={"inputs": None})
    assert r.status_code == 400
    assert "'inputs' must be a JSON object, got null" in r.json()["error"]


# -- specs: numbers too big for their field ---------------------------------------------------


def spec_body(**node: Any) -> dict[str, Any]:
    return {"spec": {"id": "big", "version": "1.0.0", "nodes": [{"id": "a", "noop": True, **node}]}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Past 64 bits: refused as JSON data; past the field's range: by the spec's check.
        (spec_body(retries=10**30), f"spec.nodes[0].retries: integer {10**30} is out of range"),
        (
            spec_body(retries=2**40),
            "nodes[0].retries: 1099511627776 is out of range (0..4294967295)",
        ),
        (spec_body(timeout=2**62), f"nodes[0].timeout: {2**62} is out of range (at most 1e+09"),
        (spec_body(timeout=1e300), "nodes[0].timeout: 1e+300 is out of range"),
        (spec_body(retry_backoff={"max": 2**64}), "nodes[0].retry_backoff.max: integer"),
        (
            spec_body(retry_backoff={"factor": 2**40}),
            "nodes[0].retry_backoff.factor: 1099511627776",
        ),
        (
            {"spec": {"id": "big", "version": "1.0.0", "max_parallel": 2**40, "nodes": []}},
            "max_parallel: 1099511627776 is out of range (1..4294967295)",
        ),
        (
            {"spec": {"id": "big", "version": "1.0.0", "timeout": 2**50, "nodes": []}},
            "timeout: 1125899906842624 is out of range",
        ),
        (
            {
                "spec": {
                    "id": "big",
                    "version": "1.0.0",
                    "nodes": [{"id": "a", "lua": "return {}", "limits": {"instructions": 2**64}}],
                }
            },
            "nodes[0].limits.instructions: integer 18446744073709551616 is out of range",
        ),
        ({"spec": {"id": "big", "version": "1.0.0", "nodes": []}, "extra": 1}, "unknown key"),
        (
            {"spec": {"id": "big", "version": "1.0.0", "nodes": []}, "metadata": None},
            "'metadata' must be a JSON object, got null",
        ),
        (
            {"spec": {"id": "big", "version": "1.0.0", "nodes": []}, "metadata": {"a": 2**64}},
            "metadata.a: integer 18446744073709551616 is out of range",
        ),
        (
            {"spec": {"id": "big", "version": "1.0.0", "description": "\udcff", "nodes": []}},
            "spec.description: string is not valid UTF-8",
        ),
    ],
)
def test_register_refuses_numbers_too_big_for_their_field(
    served: Served, body: dict[str, Any], message: str
) -> None:
    r = post_raw(served, "/workflows", json.dumps(body))
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert_still_serving(served)


def test_register_refuses_deep_and_empty_yaml(served: Served) -> None:
    for text, message in (
        (b"", "must be a mapping, got null"),
        (b"  \n", "must be a mapping, got null"),
        (b"id: x\nnodes: " + nested(100_000).encode(), "invalid YAML"),
        (b"id: x\nnodes: " + nested(MAX_DEPTH + 1).encode(), "nested deeper than 64"),
        (b'id: "\\udcff"\n', "spec.id: string is not valid UTF-8"),
    ):
        r = served.client.post(
            "/workflows", content=text, headers={"Content-Type": "application/yaml"}
        )
        assert r.status_code == 400, r.text
        assert message in r.json()["error"], r.text


# -- fuzz: never a 500, and the server keeps serving ------------------------------------------

_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
_TEXT = st.lists(st.one_of(st.characters(), _SURROGATE), max_size=6).map("".join)
_KEYS = st.one_of(
    _TEXT,
    st.sampled_from(["", "a", "a.b", "x y", "__proto__", "0", "\udcff", "ü", "inputs"]),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(_KEYS, kids, max_size=3)),
    max_leaves=12,
)


@st.composite
def near_json_bodies(draw: st.DrawFn) -> str:
    """A request body: JSON, or nearly (NaN/Infinity, lone surrogate escapes, huge integers,
    nesting around and past the limit, inputs that are not an object, stray keys)."""
    inputs = draw(st.dictionaries(_KEYS, _VALUES, max_size=4))
    text = json.dumps(inputs, ensure_ascii=draw(st.booleans()), allow_nan=True)
    shape = draw(st.sampled_from(["plain", "deep", "not-object", "extra-key"]))
    if shape == "deep":
        levels = draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3) | st.integers(1, 3000))
        text = '{"deep": ' + nested(levels) + "}"
    elif shape == "not-object":
        text = json.dumps(draw(_VALUES), allow_nan=True)
    body = '{"inputs": ' + text
    if shape == "extra-key":
        body += ', "' + draw(st.sampled_from(["wait", "timeout", "key", "other"])) + '": '
        body += json.dumps(draw(_SCALARS), allow_nan=True)
    return body + "}"


@given(body=near_json_bodies(), path=st.sampled_from([RUNS, "/hooks/async"]))
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_near_json_inputs_are_never_a_500_and_the_server_keeps_serving(
    served: Served, body: str, path: str
) -> None:
    # The text may hold lone surrogates (ensure_ascii=False): send them as the UTF-8 encoder
    # lets through, escaped, which is what a client that writes them gets on the wire.
    raw = body.encode("utf-8", "surrogatepass")
    r = served.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 202, 400), (r.status_code, r.text, body[:300])
    assert_still_serving(served)


# -- events: the cursor is what the document says ---------------------------------------------


@pytest.mark.parametrize("cursor", ["\u00b2", "1" * 19, "9" * 5000, "-1", " 1", "1.0", "\uff11"])
def test_an_event_cursor_outside_its_pattern_is_400(served: Served, cursor: str) -> None:
    run_id = served.client.post(RUNS, json={"wait": True}).json()["run_id"]
    r = served.client.get(f"/runs/{run_id}/events", params={"after": cursor})
    assert r.status_code == 400, r.text
    assert "event sequence number (up to 18 digits)" in r.json()["error"]
    r = served.client.get(f"/runs/{run_id}/events", params={"after": "1" * 18})
    assert r.status_code == 200


def test_an_offset_past_the_documented_maximum_is_400(served: Served) -> None:
    doc = served.client.get("/openapi.json").json()
    (offset,) = [p for p in doc["paths"]["/runs"]["get"]["parameters"] if p["name"] == "offset"]
    top = offset["schema"]["maximum"]
    assert served.client.get("/runs", params={"offset": top}).status_code == 200
    assert served.client.get("/runs", params={"offset": top + 1}).status_code == 400
