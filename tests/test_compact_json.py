"""``compact_json`` is ``json.dumps`` with the store's and the wire's options, made cheap:
the same text for the same data and the same errors for what JSON cannot hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dagengine._jsondata import compact_json


def dumps(value: Any, allow_nan: bool = True) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        None,
        {"a": 1, "b": [1.5, None, True, False], "c": {"d": 'é ü \u2028 "q" \\ \n'}},
        {"big": 2**63 - 1, "small": -(2**63), "float": 1e-300, "neg0": -0.0},
        ["\ud800 lone surrogate kept as json.dumps keeps it"],
        (1, 2, 3),
        {"nested": [[[[{"x": [1]}]]]]},
        "text",
        12,
    ],
)
def test_the_same_text_as_json_dumps(value: Any) -> None:
    assert compact_json(value) == dumps(value)
    assert compact_json(value, allow_nan=False) == dumps(value, allow_nan=False)


def test_nan_and_infinity_only_when_allowed() -> None:
    value = {"x": [float("nan"), float("inf"), float("-inf")]}
    assert compact_json(value) == dumps(value) == '{"x":[NaN,Infinity,-Infinity]}'
    with pytest.raises(ValueError, match="Out of range float"):
        compact_json(value, allow_nan=False)


def test_what_json_has_no_form_for_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        compact_json({"x": {1, 2}})
    with pytest.raises(TypeError, match="keys must be str"):
        compact_json({(1, 2): 3})


def test_a_cycle_is_reported_as_json_dumps_reports_it() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference detected"):
        compact_json(cycle)
