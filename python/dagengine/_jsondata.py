"""The one check that a value is JSON data, applied at every door a run's inputs come through:
``DAG.start``/``run``/``run_async``, the orchestrator's submit, the HTTP API, the CLI (the
engine's gRPC service applies the same limits to ``inputs_json``, in Rust).

JSON data is: ``None``, ``bool``, a number in the signed 64-bit range (an ``int`` in
:data:`INT_MIN` .. :data:`INT_MAX`, a finite ``float`` in -2**63 <= x < 2**63), a ``str``
that encodes as UTF-8 (no lone surrogates), a ``list`` or ``tuple`` of JSON data, a ``dict``
with ``str`` keys (UTF-8 too) and JSON data values, nested at most :data:`MAX_DEPTH` levels
(the outermost object or array is level 1).

The number rule does not depend on spelling: JSON has one number type, and ``1e19`` is the
same number as ``10000000000000000000`` (a float past 2**53 is a whole number), so both are
refused; it is also what JSON Schema's ``integer`` with those bounds says, so the OpenAPI
document can state the rule exactly.
Anything else would be stored or sent in a form that cannot be read back the same (or not at
all), so it is refused up front with a :class:`~dagengine.ValidationError` naming the path
of the offending value: ``inputs.a: string is not valid UTF-8 (lone surrogate \\udcff)``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from dagengine.exceptions import ValidationError

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "check_json_data",
    "compact_json",
    "describe_int",
    "escape",
]

#: The deepest nesting of objects and arrays accepted (the outermost counts as level 1).
MAX_DEPTH: Final = 64
#: The integer range accepted: a signed 64-bit integer (what the engine and Lua hold).
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1

_FLOAT_MIN: Final = -(2.0**63)
_FLOAT_END: Final = 2.0**63
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def describe_int(value: int) -> str:
    """``value`` in decimal, or its size when that would be long (Python refuses to write an
    int of more than 4300 digits as text)."""
    if value.bit_length() <= 256:
        return str(value)
    return f"a {'negative ' if value < 0 else ''}{value.bit_length()}-bit integer"


def escape(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udcff`` (so it can be printed or sent)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Bad(Exception):
    """A problem found inside a container; ``where`` collects the keys and indexes on the
    way out (innermost first), so a path is only built for a value that is refused."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str | int] = []


def _render(path: str, where: list[str | int]) -> str:
    parts = [path]
    for step in reversed(where):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _NAME.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{escape(repr(step))}]")
    return "".join(parts)


def _surrogate(text: str) -> str:
    for char in text:
        if 0xD800 <= ord(char) <= 0xDFFF:
            return f"\\u{ord(char):04x}"
    return "?"  # pragma: no cover - only called for strings that fail to encode


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _problem(value: Any) -> str | None:
    """What is wrong with a value that is not a plain container (``None`` if nothing)."""
    kind = type(value)
    if kind is str:
        if value.isascii() or _utf8(value):
            return None
        return f"string is not valid UTF-8 (lone surrogate {_surrogate(value)})"
    if kind is int:
        if INT_MIN <= value <= INT_MAX:
            return None
        shown = f"integer {value}" if value.bit_length() <= 256 else describe_int(value)
        return f"{shown} is out of range (a signed 64-bit integer)"
    if kind is float:
        if _FLOAT_MIN <= value < _FLOAT_END:
            return None
        if math.isfinite(value):
            return f"{value!r} is out of range (numbers must be in the signed 64-bit range)"
        return f"{value} is not a JSON number (only finite numbers are)"
    if value is None or kind is bool:
        return None
    # Subclasses of the JSON types (an IntEnum, a str subclass) are checked as their base.
    if isinstance(value, bool):
        return None
    for base in (str, int, float):
        if isinstance(value, base):
            return _problem(base(value))
    return f"{type(value).__name__} is not JSON data"


_CONTAINERS: Final = (dict, list, tuple)


def _walk(value: Any, depth: int) -> None:
    """Check a dict, list or tuple (at nesting level ``depth``) and all it holds."""
    if depth > MAX_DEPTH:
        raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
    if type(value) is dict or isinstance(value, dict):
        for key in value:
            if type(key) is not str and not isinstance(key, str):
                raise _Bad(f"keys must be strings, got {type(key).__name__} {key!r}")
            if not key.isascii() and not _utf8(key):
                raise _Bad(
                    f"key {escape(repr(key))} is not valid UTF-8 (lone surrogate {_surrogate(key)})"
                )
        items: Any = value.items()
    else:
        items = enumerate(value)
    for key, item in items:
        kind = type(item)
        if kind is str:
            if item.isascii():
                continue
        elif kind is int:
            if INT_MIN <= item <= INT_MAX:
                continue
        elif kind is dict or kind is list or kind is tuple or isinstance(item, _CONTAINERS):
            try:
                _walk(item, depth + 1)
            except _Bad as inner:
                inner.where.append(key)
                raise
            continue
        problem = _problem(item)
        if problem is not None:
            refused = _Bad(problem)
            refused.where.append(key)
            raise refused


def check_json_data(value: Any, path: str = "inputs") -> None:
    """Raise :class:`ValidationError` naming the path (``inputs.a[2]``) of the first part of
    ``value`` that is not JSON data (see the module docs); return ``None`` if all of it is."""
    try:
        if type(value) is dict or isinstance(value, _CONTAINERS):
            _walk(value, 1)
            return
        problem = _problem(value)
    except _Bad as bad:
        raise ValidationError(f"{_render(path, bad.where)}: {bad.problem}") from None
    if problem is not None:
        raise ValidationError(f"{path}: {problem}")


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _c_encoder(allow_nan: bool) -> Any:
    """The C encoder ``json.dumps(separators=(",", ":"), ensure_ascii=False)`` runs, made
    once (``json.dumps`` with options builds a new encoder per call, which costs more than
    encoding a run's inputs or a node event's few fields). Without a circular-reference
    check, since its state would be shared between threads: a cycle ends in
    ``RecursionError`` and :func:`compact_json` then lets ``json.dumps`` report it."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    return make(
        None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False,
        allow_nan,
    )  # fmt: skip


_ENCODERS: Final = {True: _c_encoder(True), False: _c_encoder(False)}


def compact_json(value: Any, *, allow_nan: bool = True) -> str:
    """``value`` as compact JSON text (no spaces, non-ASCII characters kept): exactly
    ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)``,
    errors included (``TypeError`` for a value JSON has no form for, ``ValueError`` for NaN
    or infinity without ``allow_nan`` and for a circular reference), at a fraction of its
    cost per call."""
    encode = _ENCODERS[allow_nan]
    if encode is not None:
        try:
            return "".join(encode(value, 0))
        except RecursionError:
            pass  # a cycle, or data nested deeper than the C encoder goes: json.dumps says
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)
