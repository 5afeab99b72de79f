"""``dagengine.inputs`` against an independent JSON Schema implementation (``jsonschema``,
Draft 2020-12 with its format checker): for random schemas of the supported subset and
random JSON values, inputs we refuse are refused by it too, inputs it accepts we accept,
and what we return (defaults filled) it accepts."""

from __future__ import annotations

from typing import Any

import pytest
from dagengine import InputError
from dagengine.inputs import check_schema, validate_inputs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

jsonschema = pytest.importorskip("jsonschema")

KEYS = ("a", "b", "c")
SIMPLE = ("string", "integer", "number", "boolean", "null")
TEXTS = st.sampled_from(["", "x", "2026-12-06", "2026-02-30", "2026-1-6", "20261206"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([0.0, 2.0, -1.5, 3.25]),
    TEXTS,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from((*KEYS, "d")), inner)
    ),
    max_leaves=8,
)


@st.composite
def leaf(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    kinds = draw(st.lists(st.sampled_from(SIMPLE), min_size=0, max_size=2, unique=True))
    if kinds:
        schema["type"] = kinds[0] if len(kinds) == 1 else kinds
    if draw(st.booleans()):
        schema["minimum"] = draw(st.integers(-3, 3))
    if draw(st.booleans()):
        schema["maximum"] = draw(st.integers(-3, 3))
    if draw(st.booleans()):
        schema["format"] = "date"
    if draw(st.integers(0, 4)) == 0:
        schema["enum"] = draw(st.lists(VALUES, min_size=1, max_size=3))
    return schema


def compound(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    array = st.builds(lambda items: {"type": "array", "items": items}, inner)
    obj = st.builds(
        lambda props, required, extra: {
            "type": "object",
            "properties": props,
            **({"required": sorted(required)} if required else {}),
            **({"additionalProperties": extra} if extra is not None else {}),
        },
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
        st.sets(st.sampled_from(KEYS), max_size=2),
        st.one_of(st.none(), st.booleans(), inner),
    )
    return st.one_of(array, obj)


SCHEMAS = st.recursive(leaf(), compound, max_leaves=6)
TOP = st.builds(
    lambda props, required, extra: {
        "type": "object",
        "properties": props,
        **({"required": sorted(required)} if required else {}),
        **({"additionalProperties": extra} if extra is not None else {}),
    },
    st.dictionaries(st.sampled_from(KEYS), SCHEMAS, max_size=3),
    st.sets(st.sampled_from(KEYS), max_size=2),
    st.one_of(st.none(), st.booleans(), leaf()),
)
INPUTS = st.dictionaries(st.sampled_from((*KEYS, "d")), VALUES, max_size=4)


def reference(schema: dict[str, Any]) -> Any:
    cls = jsonschema.Draft202012Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOP, INPUTS)
def test_validation_agrees_with_jsonschema(schema: dict[str, Any], inputs: dict[str, Any]) -> None:
    checked = check_schema(schema)
    ref = reference(schema)
    problems: list[dict[str, str]] | None = None
    try:
        out = validate_inputs(checked, inputs)
    except InputError as exc:
        problems = exc.problems
    if problems is not None:
        assert not ref.is_valid(inputs), (schema, inputs, problems)
        assert problems
    else:
        assert ref.is_valid(inputs), (schema, inputs, list(ref.iter_errors(inputs)))
        assert ref.is_valid(out)
    event("valid" if problems is None else "invalid")
