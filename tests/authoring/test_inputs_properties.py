"""``dagengine.inputs`` against an independent JSON Schema implementation (``jsonschema``,
Draft 2020-12 with its format checker): for random schemas of the supported subset and
random JSON values, inputs we refuse are refused by it too, inputs it accepts we accept,
and what we return (defaults filled) it accepts."""

from __future__ import annotations

from typing import Any

import dagengine.inputs
import pytest
from dagengine import InputError
from dagengine.inputs import check_schema, validate_inputs
from hypothesis import HealthCheck, event, example, given, settings
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


BOUNDS = st.sampled_from([None, None, None, -3, 0, 3, -1.5, 0.5])
QUICK_ITEMS = st.builds(
    lambda kinds, low, high: {
        **({"type": kinds[0] if len(kinds) == 1 else kinds} if kinds else {}),
        **({"minimum": low} if low is not None else {}),
        **({"maximum": high} if high is not None else {}),
    },
    st.lists(st.sampled_from(SIMPLE), max_size=2, unique=True),
    BOUNDS,
    BOUNDS,
)


# Lists of numbers (with a bool or an integral float now and then: the near misses of a quick
# pass) as well as of any scalars.
NUMBERS = st.one_of(st.integers(-5, 5), st.sampled_from([0.0, 2.0, -1.5, 3.25]), st.booleans())
LISTS = st.one_of(
    st.lists(st.integers(-5, 5), max_size=12),
    st.lists(NUMBERS, max_size=12),
    st.lists(SCALARS, max_size=12),
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(QUICK_ITEMS, QUICK_ITEMS, SCHEMAS), LISTS, st.booleans())
@example({"type": "integer"}, [1, True], False)
@example({"type": "integer"}, [1, -1.5], False)
@example({"type": "integer"}, [1, 2.0], True)
@example({"type": "number", "minimum": 0}, [1, -0.5], False)
@example({"type": "number", "maximum": 0.5}, [0, 0.5, 1], False)
@example({"type": ["integer", "null"], "maximum": 3}, [None, 4], False)
@example({"type": "boolean", "minimum": 1}, [True, False], False)
@example({"minimum": 0}, ["x", -1], False)
@example({"type": "string", "format": "date"}, ["2026-02-30"], False)
def test_a_list_checked_in_one_pass_gets_the_walks_verdict(
    items: dict[str, Any], values: list[Any], as_tuple: bool
) -> None:
    # A list whose items schema is a type of scalars is checked by its items' types in one
    # pass; the verdict (output or problems) must be the item by item walk's.
    schema = check_schema({"properties": {"xs": {"type": "array", "items": items}}})
    inputs = {"xs": tuple(values) if as_tuple else values}

    def outcome() -> Any:
        try:
            return validate_inputs(schema, inputs)
        except InputError as exc:
            return exc.problems

    quick = outcome()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dagengine.inputs, "_all_pass", lambda items, values: False)
        walked = outcome()
    assert quick == walked
    assert type(quick) is type(walked)
    if isinstance(quick, dict):
        assert type(quick["xs"]) is list
    event("valid" if isinstance(quick, dict) else "invalid")
