"""Declarative workflow specs (YAML or JSON): loading, validating and writing them.

A spec is the portable form of a :class:`~dagengine.DAG`::

    id: data-pipeline            # required; letters, digits, '_', '-', '.'
    version: 1.2.0               # semver
    description: ...
    max_parallel: 4
    fail_fast: false
    timeout: 10m                 # durations: seconds, or '500ms', '10s', '1m30s', '2h'
    nodes:
      - id: extract
        lua: return {rows = {1, 2, 3}}
        limits: {instructions: 1000000, memory: 64MiB}
      - id: load
        deps: [extract]
        python: mypkg.tasks:save     # module:function or module:Class (with execute(ctx))
        retries: 3
        retry_backoff: {initial: 1s, factor: 2, max: 1m}
        timeout: 10s
      - id: report
        deps: [load]
        workflow: reporting@^1.4     # sub-workflow and a semver range ('reporting' = any)
      - id: done
        deps: [report]
        noop: true

Each node has exactly one executor key: ``lua``, ``python``, ``workflow`` or ``noop``.
Loading validates everything before returning (types, unknown keys, durations, versions,
import paths, Lua syntax, dependencies, cycles), so a bad spec never half-runs. Errors are
:class:`~dagengine.SpecError` (and the other :class:`~dagengine.ValidationError` classes) whose
message starts with the path of the offending field, e.g. ``nodes[1].retires: unknown key
(did you mean 'retries'?)``.

:meth:`DAG.to_spec` writes the canonical form: keys in the order above, fields at their
default omitted (empty ``deps``, ``retries: 0``, default ``retry_backoff`` entries,
``fail_fast: false``), durations with the largest whole unit (``90s``, ``2m``, ``250ms``),
memory in the largest whole binary unit (``64MiB``). A canonical spec reads back unchanged:
``parse_workflow(d).to_spec() == d``.

Reading a spec is two steps, each one function used by every reader: :func:`parse`
(:mod:`dagengine.spec_model`: shape and types only, pure) gives a :class:`WorkflowSpecModel`,
and :func:`bind` (:mod:`dagengine.workflow`) makes that a runnable DAG; an engine client
sends the same model as protobuf (:func:`dagengine.engine.workflow_to_proto`). This module
adds the text: YAML/JSON files in, canonical files out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from dagengine._jsondata import MAX_DEPTH
from dagengine.exceptions import SpecError
from dagengine.nodes import resolve_import_path
from dagengine.spec_model import (
    MAX_BACKOFF_FACTOR,
    MAX_INSTRUCTIONS,
    MAX_MEMORY,
    MAX_PARALLEL,
    MAX_RETRIES,
    MAX_SECONDS,
    WorkflowSpecModel,
    parse,
    to_dict,
)
from dagengine.workflow import DAG, bind, workflow_model

__all__ = [
    "MAX_BACKOFF_FACTOR",
    "MAX_INSTRUCTIONS",
    "MAX_MEMORY",
    "MAX_PARALLEL",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "UniqueKeyLoader",
    "WorkflowSpecModel",
    "bind",
    "dag_to_spec",
    "dump_workflow",
    "load_workflow",
    "parse",
    "parse_workflow",
    "resolve_import_path",
]

_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


# --- loading ----------------------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses repeated keys (plain YAML keeps the last one silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            mark = key_node.start_mark
            raise SpecError(f"line {mark.line + 1}: duplicate key {key!r}", path=None)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def load_workflow(path: str | Path) -> DAG:
    """Load and validate a workflow spec from a ``.yaml``/``.yml`` or ``.json`` file.

    Raises ``FileNotFoundError`` if there is no such file, :class:`SpecError` for unreadable
    YAML/JSON or an invalid spec, and the other :class:`ValidationError` classes for graph
    problems; every message starts with the file name.
    """
    file = Path(path)
    fmt = _SUFFIXES.get(file.suffix.lower())
    if fmt is None:
        raise SpecError(
            f"{file}: unsupported workflow file extension {file.suffix!r} "
            "(use .yaml, .yml or .json)",
            path=None,
        )
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            f"{file}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} "
            f"(offset {exc.start}) is {exc.reason}",
            path=None,
        ) from None
    data = _parse_text(text, fmt, str(file))
    return parse_workflow(data, source=str(file))


def _too_deep(source: str) -> SpecError:
    return SpecError(f"{source}: nested deeper than {MAX_DEPTH} levels", path=None)


def _parse_text(text: str, fmt: str, source: str) -> Any:
    """The document in ``text``; a :class:`SpecError` for anything unreadable, including
    nesting past :data:`~dagengine._jsondata.MAX_DEPTH` and numbers the parsers cannot
    represent. Deep nesting is refused before the parsers recurse (a bracket count), and a
    RecursionError from them is caught anyway: it never escapes."""
    if _nesting_exceeds(text, _PRECHECK_DEPTH):
        raise _too_deep(source)
    data = _parse_document(text, fmt, source)
    if _depth(data) > MAX_DEPTH:
        raise _too_deep(source)
    return data


def _parse_document(text: str, fmt: str, source: str) -> Any:
    if fmt == "json":
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise SpecError(
                f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                path=None,
            ) from None
        except RecursionError:
            raise _too_deep(source) from None
        except ValueError as exc:  # NaN, or an integer of more than 4300 digits
            raise SpecError(f"{source}: invalid JSON: {exc}", path=None) from None
    try:
        return yaml.load(
            text, Loader=UniqueKeyLoader
        )  # a SafeLoader subclass: no arbitrary objects
    except SpecError as exc:
        raise SpecError(f"{source}: {exc.message}", path=None) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{source}: invalid YAML{where}: {problem}", path=None) from None
    except RecursionError:
        raise _too_deep(source) from None
    except (ValueError, OverflowError) as exc:  # an int of more than 4300 digits, a bad date
        raise SpecError(f"{source}: invalid YAML: {exc}", path=None) from None


def _depth(data: Any) -> int:
    """How deep lists and mappings nest in ``data`` (a scalar is 0, ``{}`` is 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: Bracket nesting refused before parsing (well past MAX_DEPTH: brackets inside strings and
#: Lua code count too; well below the parsers' recursion limits).
_PRECHECK_DEPTH: Final = 256


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether brackets (``[``, ``{``) nest deeper than ``limit`` in ``text``: a cheap bound
    taken before parsing, since JSON and YAML flow collections recurse once per level (quoted
    brackets count too, so it may over-count, never under-count). YAML block nesting is
    indentation; it recurses as well, and a RecursionError from it is caught."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in text:
        if char == "[" or char == "{":
            depth += 1
            if depth > limit:
                return True
        elif char == "]" or char == "}":
            depth = max(depth - 1, 0)
    return False


def parse_workflow(data: Mapping[str, Any], *, source: str | None = None) -> DAG:
    """Build and validate a :class:`DAG` from a spec (a mapping as read from YAML/JSON).

    ``source`` (a file name) prefixes error messages. The spec's shape is checked first
    (:func:`~dagengine.spec_model.parse`), then it is bound (:func:`~dagengine.workflow.bind`):
    Python import paths are imported now, Lua is compiled now, and the graph is
    preprocessed, so the returned DAG is ready to run.
    """
    return bind(parse(data, source=source), source=source)


# --- writing ----------------------------------------------------------------------------------


def dag_to_spec(dag: DAG) -> dict[str, Any]:
    """The canonical spec dict of ``dag`` (see the module docs); :meth:`DAG.to_spec`."""
    return to_dict(workflow_model(dag))


class _SpecDumper(yaml.SafeDumper):
    """Writes multi-line strings (Lua code) as literal blocks, so they stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SpecDumper.add_representer(str, _represent_str)


def dump_workflow(dag: DAG, path: str | Path) -> None:
    """Write ``dag``'s canonical spec to ``path`` (YAML or JSON by extension)."""
    file = Path(path)
    fmt = _SUFFIXES.get(file.suffix.lower())
    if fmt is None:
        raise SpecError(
            f"{file}: unsupported workflow file extension {file.suffix!r} "
            "(use .yaml, .yml or .json)",
            path=None,
        )
    spec = dag_to_spec(dag)
    if fmt == "json":
        text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=100)
    file.write_text(text, encoding="utf-8")
