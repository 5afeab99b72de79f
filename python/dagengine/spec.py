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
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from dagengine._jsondata import MAX_DEPTH, describe_int
from dagengine._semver import Version, VersionRange
from dagengine._units import format_duration, format_size, parse_duration, parse_size
from dagengine.exceptions import DuplicateNodeError, ImportPathError, SpecError
from dagengine.workflow import (
    _DEFAULT_BACKOFF,
    DAG,
    LuaExecutor,
    Node,
    NoopExecutor,
    PythonExecutor,
    RetryBackoff,
    SubWorkflow,
)

__all__ = [
    "MAX_BACKOFF_FACTOR",
    "MAX_INSTRUCTIONS",
    "MAX_MEMORY",
    "MAX_PARALLEL",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "dag_to_spec",
    "dump_workflow",
    "load_workflow",
    "parse_workflow",
]

# The ranges of a spec's numbers: what the engine's wire format holds (retries and
# max_parallel are 32-bit counts, Lua limits 64-bit), and durations up to about 31 years.
#: The longest duration (a timeout, a retry delay) in seconds; also a run's longest timeout.
MAX_SECONDS: Final = 1e9
MAX_RETRIES: Final = 2**32 - 1
MAX_PARALLEL: Final = 2**32 - 1
MAX_INSTRUCTIONS: Final = 2**63 - 1
MAX_MEMORY: Final = 2**63 - 1
MAX_BACKOFF_FACTOR: Final = 1000

_TOP_KEYS = ("id", "version", "description", "max_parallel", "fail_fast", "timeout", "nodes")
_EXECUTOR_KEYS = ("lua", "python", "workflow", "noop")
_NODE_KEYS = (
    "id",
    "deps",
    *_EXECUTOR_KEYS,
    "retries",
    "retry_backoff",
    "timeout",
    "limits",
)
_BACKOFF_KEYS = ("initial", "factor", "max")
_LIMIT_KEYS = ("instructions", "memory")
_WORKFLOW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


# --- loading ----------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
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


_UniqueKeyLoader.add_constructor(
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
            text, Loader=_UniqueKeyLoader
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


class _Ctx:
    """Where we are in the document, for error messages."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def error(self, path: str | None, problem: str) -> SpecError:
        where = f"{path}: " if path else ""
        prefix = f"{self.source}: " if self.source else ""
        return SpecError(f"{prefix}{where}{problem}", path=path)


_TYPE_NAMES: dict[type, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "string",
    list: "list",
    dict: "mapping",
}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _check_keys(
    ctx: _Ctx, mapping: Mapping[Any, Any], allowed: tuple[str, ...], path: str, extra_hint: str = ""
) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise ctx.error(path or None, f"keys must be strings, got {_type_name(key)} {key!r}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else extra_hint
            raise ctx.error(_join(path, key), f"unknown key{hint}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expect(ctx: _Ctx, value: object, types: tuple[type, ...], path: str, expected: str) -> None:
    # bool is an int subclass, but `retries: true` is a mistake, not 1.
    if isinstance(value, bool) and bool not in types:
        raise ctx.error(path, f"expected {expected}, got bool")
    if not isinstance(value, types):
        raise ctx.error(path, f"expected {expected}, got {_type_name(value)} {value!r}")


def _at_most(ctx: _Ctx, value: int, path: str, low: int, high: int) -> int:
    if value > high:
        raise ctx.error(path, f"{describe_int(value)} is out of range ({low}..{high})")
    return value


def _duration(ctx: _Ctx, value: object, path: str, *, positive: bool) -> float:
    try:
        seconds = parse_duration(value, what="duration")
    except (TypeError, ValueError) as exc:
        raise ctx.error(path, str(exc)) from None
    except OverflowError:  # an int too big for a float
        seconds = math.inf
    if positive and seconds <= 0:
        raise ctx.error(path, f"must be a positive duration, got {value!r}")
    if seconds > MAX_SECONDS:
        shown = describe_int(value) if isinstance(value, int) else repr(value)
        raise ctx.error(path, f"{shown} is out of range (at most {MAX_SECONDS:.0e} seconds)")
    return seconds


def parse_workflow(data: Mapping[str, Any], *, source: str | None = None) -> DAG:
    """Build and validate a :class:`DAG` from a spec (a mapping as read from YAML/JSON).

    ``source`` (a file name) prefixes error messages. Python import paths are imported now,
    Lua is compiled now, and the graph is preprocessed, so the returned DAG is ready to run.
    """
    ctx = _Ctx(source)
    if not isinstance(data, Mapping):
        raise ctx.error(None, f"a workflow spec must be a mapping, got {_type_name(data)}")
    _check_keys(ctx, data, _TOP_KEYS, "")
    if "id" not in data:
        raise ctx.error("id", "missing required key")
    wf_id = data["id"]
    _expect(ctx, wf_id, (str,), "id", "a string")
    if not _WORKFLOW_ID.fullmatch(wf_id):
        raise ctx.error(
            "id", f"invalid workflow id {wf_id!r}: use letters, digits, '_', '-' and '.'"
        )
    version = data.get("version")
    if version is not None:
        _expect(ctx, version, (str,), "version", "a semver string like '1.2.0'")
        try:
            Version.parse(version)
        except ValueError as exc:
            raise ctx.error("version", str(exc)) from None
    description = data.get("description")
    if description is not None:
        _expect(ctx, description, (str,), "description", "a string")
    max_parallel = data.get("max_parallel")
    if max_parallel is not None:
        _expect(ctx, max_parallel, (int,), "max_parallel", "a positive integer")
        if max_parallel <= 0:
            raise ctx.error("max_parallel", f"must be a positive integer, got {max_parallel}")
        _at_most(ctx, max_parallel, "max_parallel", 1, MAX_PARALLEL)
    fail_fast = data.get("fail_fast", False)
    _expect(ctx, fail_fast, (bool,), "fail_fast", "true or false")
    timeout = data.get("timeout")
    run_timeout = _duration(ctx, timeout, "timeout", positive=True) if timeout is not None else None
    if "nodes" not in data:
        raise ctx.error("nodes", "missing required key")
    nodes = data["nodes"]
    _expect(ctx, nodes, (list,), "nodes", "a list of nodes")
    if not nodes:
        raise ctx.error("nodes", "a workflow needs at least one node")

    dag = DAG(
        wf_id,
        version,
        description=description,
        max_parallel=max_parallel,
        fail_fast=fail_fast,
        timeout=run_timeout,
    )
    seen: dict[str, int] = {}
    for index, raw in enumerate(nodes):
        node = _parse_node(ctx, raw, f"nodes[{index}]")
        if node.id in seen:
            prefix = f"{source}: " if source else ""
            raise DuplicateNodeError(
                f"{prefix}nodes[{index}].id: duplicate node id {node.id!r} "
                f"(also nodes[{seen[node.id]}])",
                node_id=node.id,
            )
        seen[node.id] = index
        dag.add_node(node)
    dag.preprocess()
    return dag


def _parse_node(ctx: _Ctx, raw: object, path: str) -> Node:
    _expect(ctx, raw, (dict, Mapping), path, "a mapping with id, deps and an executor key")
    assert isinstance(raw, Mapping)
    present = [key for key in _EXECUTOR_KEYS if key in raw]
    hint = "" if present else (f" (not an executor kind; use one of {', '.join(_EXECUTOR_KEYS)})")
    _check_keys(ctx, raw, _NODE_KEYS, path, hint)
    if "id" not in raw:
        raise ctx.error(f"{path}.id", "missing required key")
    node_id = raw["id"]
    _expect(ctx, node_id, (str,), f"{path}.id", "a string")
    if not node_id:
        raise ctx.error(f"{path}.id", "must not be empty")

    deps = raw.get("deps", [])
    _expect(ctx, deps, (list,), f"{path}.deps", "a list of node ids")
    for i, dep in enumerate(deps):
        _expect(ctx, dep, (str,), f"{path}.deps[{i}]", "a node id string")
    if len(set(deps)) != len(deps):
        dup = next(d for d in deps if deps.count(d) > 1)
        raise ctx.error(f"{path}.deps", f"lists {dup!r} more than once")

    if not present:
        raise ctx.error(
            path, f"node {node_id!r} has no executor: add one of {', '.join(_EXECUTOR_KEYS)}"
        )
    if len(present) > 1:
        raise ctx.error(
            path, f"node {node_id!r} has several executors ({', '.join(present)}); keep one"
        )
    kind = present[0]
    value = raw[kind]
    executor_path = f"{path}.{kind}"

    limits = raw.get("limits")
    if limits is not None and kind != "lua":
        raise ctx.error(f"{path}.limits", "limits apply to lua nodes only")

    executor: Any
    if kind == "lua":
        _expect(ctx, value, (str,), executor_path, "Lua source code (a string)")
        max_instructions, max_memory = _parse_limits(ctx, limits, f"{path}.limits")
        executor = LuaExecutor(value, max_instructions=max_instructions, max_memory=max_memory)
    elif kind == "python":
        _expect(ctx, value, (str,), executor_path, "an import path 'module:function'")
        executor = resolve_import_path(value, node_id=node_id)
    elif kind == "workflow":
        _expect(ctx, value, (str,), executor_path, "a workflow reference like 'child@^1.4'")
        executor = _parse_workflow_ref(ctx, value, executor_path)
    else:
        if value is not True:
            raise ctx.error(executor_path, f"must be true, got {value!r}")
        executor = NoopExecutor()

    retries = raw.get("retries", 0)
    _expect(ctx, retries, (int,), f"{path}.retries", "a non-negative integer")
    if retries < 0:
        raise ctx.error(f"{path}.retries", f"must be >= 0, got {describe_int(retries)}")
    _at_most(ctx, retries, f"{path}.retries", 0, MAX_RETRIES)
    backoff = _parse_backoff(ctx, raw.get("retry_backoff"), f"{path}.retry_backoff")
    timeout = raw.get("timeout")
    node_timeout = (
        _duration(ctx, timeout, f"{path}.timeout", positive=True) if timeout is not None else None
    )
    return Node(
        node_id, deps, executor, retries=retries, retry_backoff=backoff, timeout=node_timeout
    )


def _parse_limits(ctx: _Ctx, limits: object, path: str) -> tuple[int | None, int | None]:
    if limits is None:
        return None, None
    _expect(ctx, limits, (dict, Mapping), path, "a mapping with instructions and/or memory")
    assert isinstance(limits, Mapping)
    _check_keys(ctx, limits, _LIMIT_KEYS, path)
    instructions = limits.get("instructions")
    if instructions is not None:
        _expect(ctx, instructions, (int,), f"{path}.instructions", "a positive integer")
        if instructions <= 0:
            raise ctx.error(
                f"{path}.instructions", f"must be positive, got {describe_int(instructions)}"
            )
        _at_most(ctx, instructions, f"{path}.instructions", 1, MAX_INSTRUCTIONS)
    memory = limits.get("memory")
    memory_bytes = None
    if memory is not None:
        try:
            memory_bytes = parse_size(memory, what="memory")
        except (TypeError, ValueError) as exc:
            raise ctx.error(f"{path}.memory", str(exc)) from None
        _at_most(ctx, memory_bytes, f"{path}.memory", 1, MAX_MEMORY)
    return instructions, memory_bytes


def _parse_backoff(ctx: _Ctx, raw: object, path: str) -> RetryBackoff:
    if raw is None:
        return _DEFAULT_BACKOFF
    _expect(ctx, raw, (dict, Mapping), path, "a mapping with initial, factor and/or max")
    assert isinstance(raw, Mapping)
    _check_keys(ctx, raw, _BACKOFF_KEYS, path)
    initial = _DEFAULT_BACKOFF.initial
    factor = _DEFAULT_BACKOFF.factor
    maximum = _DEFAULT_BACKOFF.max
    if "initial" in raw:
        initial = _duration(ctx, raw["initial"], f"{path}.initial", positive=False)
    if "max" in raw:
        maximum = _duration(ctx, raw["max"], f"{path}.max", positive=False)
    if "factor" in raw:
        factor = raw["factor"]
        _expect(ctx, factor, (int, float), f"{path}.factor", "a number >= 1")
        if not factor >= 1:
            raise ctx.error(f"{path}.factor", f"must be >= 1, got {factor!r}")
        if not factor <= MAX_BACKOFF_FACTOR:
            shown = describe_int(factor) if isinstance(factor, int) else repr(factor)
            raise ctx.error(f"{path}.factor", f"{shown} is out of range (1..{MAX_BACKOFF_FACTOR})")
    return RetryBackoff(initial, float(factor), maximum)


def _parse_workflow_ref(ctx: _Ctx, ref: str, path: str) -> SubWorkflow:
    wf_id, _, version_range = ref.partition("@")
    wf_id = wf_id.strip()
    if not _WORKFLOW_ID.fullmatch(wf_id):
        raise ctx.error(
            path,
            f"invalid workflow reference {ref!r}: expected 'workflow-id' or 'workflow-id@range'",
        )
    if "@" in ref and not version_range.strip():
        raise ctx.error(path, f"invalid workflow reference {ref!r}: empty version range after '@'")
    version_range = version_range.strip() or "*"
    try:
        VersionRange.parse(version_range)
    except ValueError as exc:
        raise ctx.error(path, str(exc)) from None
    return SubWorkflow(wf_id, version_range)


def resolve_import_path(path: str, *, node_id: str | None = None) -> PythonExecutor:
    """Import ``module:qualname`` and return an executor for it.

    A function (sync or async) is called as ``fn(ctx)``; a class is instantiated with no
    arguments and its ``execute(ctx)`` called; a module-level object with ``execute`` is used
    as is. Raises :class:`ImportPathError` naming the node, the path and why it failed.
    """
    who = f"node {node_id!r}: " if node_id is not None else ""

    def fail(reason: str) -> ImportPathError:
        return ImportPathError(
            f"{who}python import path {path!r} does not resolve: {reason}",
            node_id=node_id,
            path=path,
        )

    if not _IMPORT_PATH.fullmatch(path):
        raise fail("expected 'package.module:function' (or 'package.module:Class')")
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing user code means "does not resolve"
        raise fail(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = getattr(obj, "__name__", type(obj).__name__)
            raise fail(f"{owner!r} has no attribute {part!r}") from None
    if isinstance(obj, type):
        if not callable(getattr(obj, "execute", None)):
            raise fail(f"class {qualname} has no execute(ctx) method")
        try:
            instance = obj()
        except Exception as exc:
            raise fail(f"cannot instantiate {qualname}(): {type(exc).__name__}: {exc}") from exc
        return PythonExecutor(instance.execute, import_path=path)
    execute = getattr(obj, "execute", None)
    if callable(execute) and not callable(obj):
        return PythonExecutor(execute, import_path=path)
    if not callable(obj):
        raise fail(f"{qualname} is a {type(obj).__name__}, not a function or executor class")
    return PythonExecutor(obj, import_path=path)


# --- writing ----------------------------------------------------------------------------------


def _derived_import_path(node_id: str, obj: Any, what: str, path: str) -> str:
    """``module:qualname`` of a module-level function or class, or a SpecError saying why the
    object cannot be named in a spec."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        label = qualname or type(obj).__name__
        why = "is defined in __main__" if module == "__main__" else "has no import path"
        raise SpecError(
            f"node {node_id!r}: {what} {label} {why}; lambdas, closures and __main__ functions "
            "only work in-process (use a module-level function, or pass "
            "PythonExecutor(fn, import_path='module:function'))",
            path=path,
        )
    return f"{module}:{qualname}"


def _python_path(node: Node, path: str) -> str:
    executor = node.executor
    if isinstance(executor, PythonExecutor):
        if executor.import_path is not None:
            return executor.import_path
        fn: Callable[..., Any] = executor.fn
        owner = getattr(fn, "__self__", None)
        if owner is not None and getattr(fn, "__name__", None) == "execute":
            # A bound execute method stands for its executor class.
            return _derived_import_path(node.id, type(owner), "executor class", path)
        return _derived_import_path(node.id, fn, "function", path)
    return _derived_import_path(node.id, type(executor), "executor class", path)


def dag_to_spec(dag: DAG) -> dict[str, Any]:
    """The canonical spec dict of ``dag`` (see the module docs); :meth:`DAG.to_spec`."""
    if dag.id is None:
        raise SpecError("a DAG needs an id to be written as a spec: DAG('my-workflow')", path="id")
    if not dag.nodes:
        raise SpecError(f"DAG {dag.id!r} has no nodes", path="nodes")
    spec: dict[str, Any] = {"id": dag.id}
    if dag.version is not None:
        spec["version"] = dag.version
    if dag.description is not None:
        spec["description"] = dag.description
    if dag.max_parallel is not None:
        spec["max_parallel"] = dag.max_parallel
    if dag.fail_fast:
        spec["fail_fast"] = True
    if dag.timeout is not None:
        spec["timeout"] = format_duration(dag.timeout)
    spec["nodes"] = [
        _node_to_spec(node, f"nodes[{index}]") for index, node in enumerate(dag.nodes.values())
    ]
    return spec


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _node_to_spec(node: Node, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id}
    if node.deps:
        out["deps"] = list(node.deps)
    executor = node.executor
    limits: dict[str, Any] = {}
    if isinstance(executor, NoopExecutor):
        out["noop"] = True
    elif isinstance(executor, LuaExecutor):
        out["lua"] = executor.code
        if executor.max_instructions is not None:
            limits["instructions"] = executor.max_instructions
        if executor.max_memory is not None:
            limits["memory"] = format_size(executor.max_memory)
    elif isinstance(executor, SubWorkflow):
        out["workflow"] = executor.reference
    else:
        out["python"] = _python_path(node, f"{path}.python")
    if node.retries:
        out["retries"] = node.retries
    backoff = node.retry_backoff
    if backoff != _DEFAULT_BACKOFF:
        entry: dict[str, Any] = {}
        if backoff.initial != _DEFAULT_BACKOFF.initial:
            entry["initial"] = format_duration(backoff.initial)
        if backoff.factor != _DEFAULT_BACKOFF.factor:
            entry["factor"] = _number(backoff.factor)
        if backoff.max != _DEFAULT_BACKOFF.max:
            entry["max"] = format_duration(backoff.max)
        out["retry_backoff"] = entry
    if node.timeout is not None:
        out["timeout"] = format_duration(node.timeout)
    if limits:
        out["limits"] = limits
    return out


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
