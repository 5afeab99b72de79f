"""The run inputs of the command line: ``--input NAME=VALUE`` and ``--inputs-json``, read as
the API reads JSON and, given the workflow's ``inputs:`` schema, as that schema wants
(:func:`dagengine.inputs.coerce_text`); :func:`remote_schema` asks a server for it."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagengine._jsondata import MAX_DEPTH, check_json_data, escape
from dagengine.exceptions import DagEngineError, ValidationError
from dagengine.inputs import coerce_text

__all__ = ["BadInput", "parse_input_value", "parse_inputs", "remote_schema"]


class BadInput(Exception):
    """A user error found by the CLI itself (bad ``--input``, unreadable ``@file``)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    """JSON as the API reads it: ``NaN``/``Infinity`` refused (ValueError), nesting past the
    limit refused before the parser recurses (BadInput)."""
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting(text) > MAX_DEPTH:
        raise BadInput(f"nested deeper than {MAX_DEPTH} levels")
    return json.loads(text, parse_constant=_reject_constant)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def parse_input_value(text: str) -> Any:
    """A ``--input`` value: JSON when it parses as JSON (``3``, ``true``, ``[1, 2]``), else the
    string itself (``hello``)."""
    try:
        return _loads(text)
    except ValueError:
        return text


def parse_inputs(
    pairs: Sequence[str], inputs_json: str | None, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build the run's inputs: ``--inputs-json`` (JSON object, or ``@file``) first, then each
    ``--input NAME=VALUE`` on top, VALUE read as the inputs ``schema`` (if any) wants."""
    inputs: dict[str, Any] = {}
    if inputs_json is not None:
        text = inputs_json
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise BadInput(f"--inputs-json {inputs_json}: {exc.strerror or exc}") from None
            except UnicodeDecodeError as exc:
                raise BadInput(f"--inputs-json {inputs_json}: not UTF-8 text: {exc}") from None
        try:
            loaded = _loads(text)
        except BadInput as exc:
            raise BadInput(f"--inputs-json: {exc}") from None
        except ValueError as exc:
            raise BadInput(f"--inputs-json: invalid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise BadInput(f"--inputs-json: expected a JSON object, got {type(loaded).__name__}")
        try:
            check_json_data(loaded, "inputs")
        except ValidationError as exc:
            raise BadInput(f"--inputs-json: {exc}") from None
        inputs.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"bad --input {escape(repr(pair))}: expected NAME=VALUE")
        key = name.strip()
        try:
            parsed = coerce_text(schema, key, value, parse=parse_input_value)
            check_json_data({key: parsed}, "inputs")
        except (BadInput, ValidationError) as exc:
            raise BadInput(f"bad --input {escape(repr(key))}: {exc}") from None
        inputs[key] = parsed
    return inputs


def remote_schema(client: Any, workflow_id: str, version: str | None) -> dict[str, Any] | None:
    """The ``inputs:`` schema a server holds for ``workflow_id`` (that ``version``'s, else the
    latest's), to read ``--input`` values by; ``None`` if it has none or cannot say (the
    submit that follows reports an unknown workflow or an unreachable server itself)."""
    try:
        info = client.request("GET", f"/workflows/{urllib.parse.quote(workflow_id, safe='')}")
    except DagEngineError:
        return None
    if not isinstance(info, Mapping):
        return None
    for entry in info.get("versions") or ():
        if version is not None and isinstance(entry, Mapping) and entry.get("version") == version:
            schema = entry.get("inputs")
            return schema if isinstance(schema, dict) else None
    schema = info.get("inputs")
    return schema if isinstance(schema, dict) else None
