"""Typed run inputs: a workflow's ``inputs:`` JSON Schema, checked and applied.

A spec (or ``DAG(inputs=...)``) may describe its run inputs with a JSON Schema of this subset:
``type`` (``string``, ``integer``, ``number``, ``boolean``, ``array``, ``object``, ``null``, or
a list of them), ``properties``, ``required``, ``additionalProperties``, ``default``,
``enum``, ``minimum`` / ``maximum``, ``items``, ``format`` (``date``, ``date-time``), and
the annotations ``title``, ``description`` and ``examples``. The top level describes an
object (the inputs themselves).

* :func:`check_schema` checks a schema once, when the workflow is defined (a
  :class:`~dagengine.SpecError` naming the keyword at fault);
* :func:`validate_inputs` checks a run's inputs against it and fills in defaults, at every
  door a run comes through (``DAG.run``, the engine client, the orchestrator, hence the REST
  API, triggers and the CLI); every problem is listed in one :class:`~dagengine.InputError`;
* :func:`schema_from_signature` derives the schema of a decorated workflow from its
  parameters' type hints and defaults;
* :func:`coerce_text` turns a command line's ``--input name=text`` into the type the schema
  wants.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import enum
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from dagengine._jsondata import check_json_data
from dagengine.exceptions import InputError, SpecError, ValidationError

__all__ = [
    "SCHEMA_KEYWORDS",
    "TYPES",
    "check_schema",
    "coerce_text",
    "schema_from_signature",
    "validate_inputs",
]

#: The JSON types a schema's ``type`` may name.
TYPES: Final = ("string", "integer", "number", "boolean", "array", "object", "null")
#: The keywords a schema may use (anything else is a spec error: a typo would be ignored).
SCHEMA_KEYWORDS: Final = (
    "type",
    "properties",
    "required",
    "additionalProperties",
    "default",
    "enum",
    "minimum",
    "maximum",
    "items",
    "format",
    "title",
    "description",
    "examples",
)
_FORMATS: Final = ("date", "date-time")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2}(?:\.\d+)?)([Zz]|[+-]\d{2}:\d{2})"
)


# --- checking a schema ------------------------------------------------------------------------


def check_schema(schema: object, path: str = "inputs") -> dict[str, Any]:
    """``schema`` checked (see the module docs) and returned as a plain dict; a
    :class:`SpecError` at ``path`` (``inputs.properties.factor.minimum``) if it is not a
    schema of the supported subset, or if a ``default`` does not match its own schema."""
    if not isinstance(schema, Mapping):
        raise SpecError(
            f"{path}: expected a JSON Schema (a mapping), got {_json_type(schema)}", path=path
        )
    try:
        check_json_data(schema, path)
    except ValidationError as exc:
        raise SpecError(str(exc), path=path) from None
    out = copy.deepcopy(dict(schema))
    _check_node(out, path)
    kinds = _types(out)
    if kinds is not None and kinds != ["object"]:
        raise SpecError(
            f"{path}.type: the inputs are an object; expected 'object', got {out['type']!r}",
            path=f"{path}.type",
        )
    return out


def _fail(path: str, problem: str) -> SpecError:
    return SpecError(f"{path}: {problem}", path=path)


def _types(schema: Mapping[str, Any]) -> list[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    return [kind] if isinstance(kind, str) else list(kind)


def _check_node(schema: dict[str, Any], path: str) -> None:
    for key in schema:
        if key not in SCHEMA_KEYWORDS:
            close = difflib.get_close_matches(key, SCHEMA_KEYWORDS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else " (not a supported keyword)"
            raise _fail(f"{path}.{key}", f"unknown keyword{hint}")
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names:
            raise _fail(f"{path}.type", f"expected a type name or a list of them, got {kind!r}")
        for name in names:
            if name not in TYPES:
                raise _fail(f"{path}.type", f"unknown type {name!r} (one of {', '.join(TYPES)})")
    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            raise _fail(f"{path}.properties", "expected a mapping of property schemas")
        for name, sub in properties.items():
            if not isinstance(sub, dict):
                raise _fail(f"{path}.properties.{name}", "expected a schema (a mapping)")
            _check_node(sub, f"{path}.properties.{name}")
    required = schema.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(r, str) for r in required)
    ):
        raise _fail(f"{path}.required", "expected a list of property names")
    extra = schema.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        if not isinstance(extra, dict):
            raise _fail(f"{path}.additionalProperties", "expected true, false or a schema")
        _check_node(extra, f"{path}.additionalProperties")
    items = schema.get("items")
    if items is not None:
        if not isinstance(items, dict):
            raise _fail(f"{path}.items", "expected a schema (a mapping)")
        _check_node(items, f"{path}.items")
    for bound in ("minimum", "maximum"):
        value = schema.get(bound)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _fail(f"{path}.{bound}", f"expected a number, got {_json_type(value)}")
    enum_values = schema.get("enum")
    if enum_values is not None and (not isinstance(enum_values, list) or not enum_values):
        raise _fail(f"{path}.enum", "expected a non-empty list of values")
    fmt = schema.get("format")
    if fmt is not None and fmt not in _FORMATS:
        raise _fail(f"{path}.format", f"unsupported format {fmt!r} (one of {', '.join(_FORMATS)})")
    for text in ("title", "description"):
        if text in schema and not isinstance(schema[text], str):
            raise _fail(f"{path}.{text}", "expected a string")
    if "default" in schema:
        problems: list[tuple[str, str]] = []
        _validate(schema, schema["default"], "default", problems, fill=False)
        if problems:
            where, problem = problems[0]
            raise _fail(f"{path}.default", f"the default does not match: {where}: {problem}")


# --- validating inputs ------------------------------------------------------------------------


def validate_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` checked against ``schema`` (from :func:`check_schema`), with the defaults
    of missing properties filled in (a new dict; ``inputs`` is not changed). Raises one
    :class:`InputError` listing every problem, each naming its path and the expectation."""
    problems: list[tuple[str, str]] = []
    out = _validate(schema, inputs, "inputs", problems, fill=True)
    if problems:
        raise InputError.from_problems(problems)
    return out  # type: ignore[no-any-return]


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _show(value: object) -> str:
    """A value as the message shows it: JSON, cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is(kind: str, value: object) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, (list, tuple))
    if kind == "object":
        return isinstance(value, Mapping)
    return value is None


def _validate(
    schema: Mapping[str, Any],
    value: Any,
    path: str,
    problems: list[tuple[str, str]],
    *,
    fill: bool,
) -> Any:
    kinds = _types(schema)
    if kinds is not None and not any(_is(kind, value) for kind in kinds):
        expected = " or ".join(kinds)
        problems.append((path, f"expected {expected}, got {_show(value)}"))
        return value
    if "enum" in schema and not any(_same(value, choice) for choice in schema["enum"]):
        choices = ", ".join(_show(choice) for choice in schema["enum"])
        problems.append((path, f"expected one of {choices}, got {_show(value)}"))
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and value < low:
            problems.append((path, f"expected at least {_show(low)}, got {_show(value)}"))
        if high is not None and value > high:
            problems.append((path, f"expected at most {_show(high)}, got {_show(value)}"))
    elif isinstance(value, str) and "format" in schema:
        problem = _check_format(schema["format"], value)
        if problem is not None:
            problems.append((path, problem))
    elif isinstance(value, (list, tuple)) and "items" in schema:
        items = schema["items"]
        if not _all_pass(items, value):
            value = [
                _validate(items, item, f"{path}[{i}]", problems, fill=fill)
                for i, item in enumerate(value)
            ]
        elif type(value) is not list:
            value = list(value)
    elif isinstance(value, Mapping):
        value = _validate_object(schema, value, path, problems, fill=fill)
    return value


# What an array's items schema may hold and still be checked in one pass over the items'
# types: a type of scalars, bounds, and annotations (enum, format, objects and arrays inside
# are checked item by item, as are arrays a quick pass finds a problem in).
_QUICK_KEYWORDS: Final = frozenset(
    ("type", "minimum", "maximum", "title", "description", "examples")
)
_QUICK_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),  # an integral float is an integer too: the item by item check says so
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _all_pass(items: Mapping[str, Any], values: Sequence[Any]) -> bool:
    """Whether every one of ``values`` passes the ``items`` schema as it is, known without a
    walk item by item: true when the schema is only a type of scalars (and bounds) and the
    items' Python types and extremes say so. The walk, and its messages, are for the rest;
    so the cost of a long list is what its items schema asks for (``list[int]``: one pass in
    C over 100,000 items instead of a call per item)."""
    if not values:
        return True
    if not _QUICK_KEYWORDS.issuperset(items):
        return False
    kinds = _types(items)
    if kinds is None:
        return "minimum" not in items and "maximum" not in items
    accepted: set[type] = set()
    for kind in kinds:
        quick = _QUICK_TYPES.get(kind)
        if quick is None:
            return False
        accepted.update(quick)
    if not accepted.issuperset(map(type, values)):
        return False
    low, high = items.get("minimum"), items.get("maximum")
    if low is None and high is None:
        return True
    if not accepted.issubset((int, float)):
        return False  # bounds apply to the numbers among other types: item by item
    return (low is None or min(values) >= low) and (high is None or max(values) <= high)


def _same(a: object, b: object) -> bool:
    """JSON equality, deep: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, Mapping)) or isinstance(b, (list, tuple, Mapping)):
        return False
    return isinstance(a, bool) is isinstance(b, bool) and a == b


def _validate_object(
    schema: Mapping[str, Any],
    value: Mapping[str, Any],
    path: str,
    problems: list[tuple[str, str]],
    *,
    fill: bool,
) -> dict[str, Any]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    out = dict(value)
    for name in schema.get("required", ()):
        if name not in value and "default" not in properties.get(name, {}):
            problems.append((f"{path}.{name}", "required, missing"))
    for name, sub in properties.items():
        if name in out:
            out[name] = _validate(sub, out[name], f"{path}.{name}", problems, fill=fill)
        elif fill and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    extra = schema.get("additionalProperties", True)
    if extra is not True:
        for name in value:
            if name in properties:
                continue
            if extra is False:
                known = ", ".join(properties) or "none"
                problems.append((f"{path}.{name}", f"unknown input (expected one of: {known})"))
            else:
                out[name] = _validate(extra, out[name], f"{path}.{name}", problems, fill=fill)
    return out


def _check_format(fmt: str, value: str) -> str | None:
    try:
        if fmt == "date":
            if not _DATE.fullmatch(value):
                raise ValueError
            dt.date.fromisoformat(value)
        else:
            match = _DATE_TIME.fullmatch(value)
            if match is None:
                raise ValueError
            date, time, zone = match.groups()
            zone = "+00:00" if zone in "Zz" else zone
            dt.datetime.fromisoformat(f"{date}T{time}{zone}")
    except ValueError:
        example = "2026-12-06" if fmt == "date" else "2026-12-06T09:30:00Z"
        return f"expected a {fmt} like {example!r}, got {_show(value)}"
    return None


# --- the command line -------------------------------------------------------------------------


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def coerce_text(
    schema: Mapping[str, Any] | None,
    name: str,
    text: str,
    *,
    parse: Callable[[str], Any] = _json_or_text,
) -> Any:
    """The value of ``--input name=text``: as the schema's property ``name`` wants (text for
    a string, so ``--input code=007`` stays ``"007"``; a number for a number), else
    ``parse(text)`` (JSON when it parses as JSON, else the text). A value the schema cannot
    take is left for :func:`validate_inputs` to report."""
    sub = (schema or {}).get("properties", {}).get(name, {})
    kinds = _types(sub) or []
    if kinds and "string" in kinds and not ({"null", "boolean", "integer", "number"} & set(kinds)):
        return text
    if kinds == ["integer"]:
        try:
            return int(text)
        except ValueError:
            return text
    if kinds == ["number"]:
        try:
            return float(text) if not re.fullmatch(r"[+-]?\d+", text) else int(text)
        except ValueError:
            return text
    return parse(text)


# --- from type hints --------------------------------------------------------------------------

_SIMPLE: Final[dict[Any, dict[str, Any]]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    None: {"type": "null"},
    dt.date: {"type": "string", "format": "date"},
    dt.datetime: {"type": "string", "format": "date-time"},
    list: {"type": "array"},
    dict: {"type": "object"},
}


def schema_from_signature(fn: Callable[..., Any], *, owner: str) -> dict[str, Any]:
    """The inputs schema of a workflow function: one property per parameter, typed by its
    hint (``str``, ``int``, ``float``, ``bool``, ``list[X]``, ``dict[str, X]``, ``X | None``,
    ``Literal[...]``, an ``Enum``, ``datetime.date`` / ``datetime`` as formatted strings,
    ``Any`` or none: anything), with its default; parameters without one are required.
    A ``TypeError`` names a hint or default (``owner``: the workflow's name) it cannot use."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # an unresolvable annotation: say which workflow
        raise TypeError(f"workflow {owner}: cannot resolve its type hints: {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        where = f"workflow {owner}: parameter {param.name}"
        prop = _hint_schema(hints[param.name], where) if param.name in hints else {}
        if param.default is param.empty:
            required.append(param.name)
        else:
            default = param.default.value if isinstance(param.default, enum.Enum) else param.default
            try:
                check_json_data(default, param.name)
            except ValidationError as exc:
                raise TypeError(f"{where}: the default is not JSON data: {exc}") from None
            prop["default"] = json.loads(json.dumps(default))  # JSON's form: tuples as lists
        properties[param.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return check_schema(schema, f"workflow {owner}: inputs")


def _hint_schema(hint: Any, where: str) -> dict[str, Any]:
    if hint is Any or hint is object:
        return {}
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return dict(simple)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _hint_schema(args[0], where)
    if origin is typing.Literal:
        return _enum_schema(list(args), where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint], where)
    if origin in (typing.Union, types.UnionType):
        members = [_hint_schema(arg, where) for arg in args]
        if any(not member for member in members):
            return {}
        kinds: list[str] = []
        for member in members:
            if set(member) - {"type"}:
                if len(members) == 2 and {"type": "null"} in members:
                    nullable = dict(member)
                    nullable["type"] = [*(_types(member) or []), "null"]
                    return nullable
                raise TypeError(f"{where}: the union {hint} is not supported; use simple types")
            kinds.extend(_types(member) or [])
        return {"type": kinds}
    if origin in (list, tuple, Sequence) or origin is typing.Sequence:
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"{where}: a fixed-length tuple {hint} is not supported")
        item = args[0] if args else Any
        items = _hint_schema(item, where)
        return {"type": "array", "items": items} if items else {"type": "array"}
    if origin in (dict, Mapping) or origin is typing.Mapping:
        if args and args[0] is not str:
            raise TypeError(f"{where}: object keys are strings, not {args[0]}")
        values = _hint_schema(args[1], where) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": values} if values else {"type": "object"}
    raise TypeError(
        f"{where}: type hint {hint!r} has no JSON Schema (use str, int, float, bool, list, "
        "dict, Literal, an Enum, date/datetime, X | None, or Any)"
    )


def _enum_schema(values: list[Any], where: str) -> dict[str, Any]:
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"{where}: enum value {value!r} is not JSON data")
    kinds = {_json_type(value) for value in values}
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1 and kinds <= set(TYPES):
        schema = {"type": kinds.pop(), "enum": values}
    return schema
