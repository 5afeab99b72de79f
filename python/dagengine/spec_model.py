"""The parsed form of a workflow spec, and :func:`parse`: the one place a spec's shape is
checked (types, unknown keys, ranges, durations, versions, workflow references).

:func:`parse` imports nothing and runs no user code: ``python:`` import paths are kept as
text, Lua is not compiled, and the graph (unknown dependencies, cycles, duplicate node ids)
is not looked at. Two steps take a :class:`WorkflowSpecModel` on from here:
:func:`dagengine.workflow.bind` makes it a runnable :class:`~dagengine.DAG` (resolving import
paths, compiling Lua, validating the graph), and :func:`dagengine.engine.workflow_to_proto`
makes it the ``WorkflowSpec`` message an engine validates the rest of. :func:`to_dict` writes
a model back as a canonical spec dict (see :mod:`dagengine.spec`).

Errors are :class:`~dagengine.SpecError` whose message starts with the path of the field
(and the source file, when given): ``nodes[1].retires: unknown key (did you mean
'retries'?)``.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from dagengine._jsondata import describe_int
from dagengine._semver import Version, VersionRange
from dagengine._units import format_duration, format_size, parse_duration, parse_size
from dagengine.exceptions import SpecError
from dagengine.inputs import check_schema

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_ITEMS",
    "EXECUTOR_KINDS",
    "MAX_BACKOFF_FACTOR",
    "MAX_INSTRUCTIONS",
    "MAX_MEMORY",
    "MAX_PARALLEL",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "TRIGGER_RULES",
    "WORKFLOW_ID",
    "CachePolicy",
    "ExecutorSpec",
    "LuaSpec",
    "NodeSpecModel",
    "NoopSpec",
    "PythonSpec",
    "RetryBackoff",
    "WorkflowRef",
    "WorkflowSpecModel",
    "check_cache",
    "check_map_options",
    "check_trigger_rule",
    "map_parent",
    "parse",
    "parse_workflow_ref",
    "to_dict",
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

#: A workflow id: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit.
WORKFLOW_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: A node's executor keys, one of which each node has.
EXECUTOR_KINDS: Final = ("lua", "python", "workflow", "noop")

_TOP_KEYS = (
    "id",
    "version",
    "description",
    "inputs",
    "max_parallel",
    "fail_fast",
    "timeout",
    "nodes",
)
#: The trigger rules a node may name (Airflow's); ``all_success`` is the default.
TRIGGER_RULES: Final = (
    "all_success",
    "all_done",
    "all_failed",
    "one_success",
    "one_failed",
    "none_failed",
    "none_failed_min_one_success",
    "none_skipped",
)

_NODE_KEYS = (
    "id",
    "deps",
    *EXECUTOR_KINDS,
    "retries",
    "retry_backoff",
    "timeout",
    "limits",
    "when",
    "trigger_rule",
    "map",
    "max_parallel",
    "allow_partial",
    "max_items",
    "cache",
)
_CACHE_KEYS = ("key", "ttl")
_BACKOFF_KEYS = ("initial", "factor", "max")
_LIMIT_KEYS = ("instructions", "memory")


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """Delay before retry ``n`` (1-based) is ``min(initial * factor ** (n - 1), max)`` seconds."""

    initial: float = 1.0
    factor: float = 2.0
    max: float = 60.0

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"retry_backoff.{name} must be a number, got {type(value).__name__}"
                )
            if not math.isfinite(value) or value < 0:
                raise SpecError(
                    f"retry_backoff.{name} must be a finite number >= 0, got {value!r}",
                    path=f"retry_backoff.{name}",
                )
            object.__setattr__(self, name, float(value))
        if self.factor < 1:
            raise SpecError(
                f"retry_backoff.factor must be >= 1, got {self.factor!r}",
                path="retry_backoff.factor",
            )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        return min(self.initial * self.factor ** max(retry - 1, 0), self.max)


#: The backoff of a node that sets none. Frozen, so one instance serves every such node
#: (validating a new one per node was most of the cost of building a large DAG).
DEFAULT_BACKOFF: Final = RetryBackoff()


@dataclass(frozen=True, slots=True)
class LuaSpec:
    """``lua: <code>`` with its ``limits`` (``None``: the core's defaults)."""

    code: str
    max_instructions: int | None = None
    max_memory: int | None = None


@dataclass(frozen=True, slots=True)
class PythonSpec:
    """``python: module:function``, not imported."""

    import_path: str


@dataclass(frozen=True, slots=True)
class WorkflowRef:
    """``workflow: child@range``: a sub-workflow reference (``*`` for any version)."""

    workflow_id: str
    version_range: str = "*"

    @property
    def reference(self) -> str:
        """``child@range``, or just ``child`` for any version."""
        if self.version_range.strip() == "*":
            return self.workflow_id
        return f"{self.workflow_id}@{self.version_range}"


@dataclass(frozen=True, slots=True)
class NoopSpec:
    """``noop: true``."""


#: What a node of a spec runs.
ExecutorSpec: TypeAlias = "LuaSpec | PythonSpec | WorkflowRef | NoopSpec"


@dataclass(frozen=True, slots=True)
class NodeSpecModel:
    """One node of a parsed spec; durations are in seconds."""

    id: str
    executor: ExecutorSpec
    deps: tuple[str, ...] = ()
    retries: int = 0
    retry_backoff: RetryBackoff = DEFAULT_BACKOFF
    timeout: float | None = None
    #: A Lua boolean expression over ``inputs`` and ``results``; false skips the node.
    when: str | None = None
    #: One of :data:`TRIGGER_RULES`.
    trigger_rule: str = "all_success"
    #: Dynamic fan-out: a Lua expression giving the list the node runs once per item of.
    map: str | None = None
    #: A mapped node's items running at once (``None``: no limit of its own).
    max_parallel: int | None = None
    #: A mapped node whose item fails still succeeds (that item's output is ``null``).
    allow_partial: bool = False
    #: The most items a mapped node may have (``None``: :data:`DEFAULT_MAX_ITEMS`).
    max_items: int | None = None
    #: How the node is cached (``None``: not cached).
    cache: CachePolicy | None = None


#: How many items a mapped node may have unless its ``max_items`` says otherwise.
DEFAULT_MAX_ITEMS = 100_000


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How a node is cached (``cache: true`` is ``CachePolicy()``).

    The key is a hash of the node's code with, by default, the run's inputs and the
    parents' outputs; or with ``key``'s value, a Lua expression over ``inputs`` and
    ``results`` giving a string or a number. ``ttl`` (seconds) is how long an entry may
    be used (``None``: until the cache evicts it).
    """

    key: str | None = None
    ttl: float | None = None


def check_cache(node_id: str, value: object, *, mapped: bool = False) -> CachePolicy | None:
    """A node's ``cache`` (``True``, ``False``/``None``, a mapping with ``key`` and/or
    ``ttl``, or a :class:`CachePolicy`) as a policy; a :class:`SpecError` (path ``cache`` or
    ``cache.<field>``) naming the node for an unknown field, a bad ttl or key, and for a
    mapped node (which cannot be cached)."""
    who = f"node {node_id!r}"
    if value is None or value is False:
        return None
    if mapped:
        raise SpecError(f"{who}: a mapped node cannot be cached", path="cache")
    if value is True:
        return CachePolicy()
    if isinstance(value, CachePolicy):
        return value
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{who}: cache must be true or a mapping with key and/or ttl, "
            f"got {type(value).__name__}",
            path="cache",
        )
    for field in value:
        if field not in _CACHE_KEYS:
            raise SpecError(
                f"{who}: cache.{field}: unknown key (expected key or ttl)", path=f"cache.{field}"
            )
    key = value.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise SpecError(
            f"{who}: cache.key must be a non-empty Lua expression (a string), got {key!r}",
            path="cache.key",
        )
    ttl = value.get("ttl")
    seconds = None
    if ttl is not None:
        try:
            seconds = parse_duration(ttl, what="cache.ttl")
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{who}: {exc}", path="cache.ttl") from None
        if seconds <= 0:
            raise SpecError(f"{who}: cache.ttl must be positive, got {ttl!r}", path="cache.ttl")
    return CachePolicy(key, seconds)


_MAP_RESULTS = re.compile(r"""\s*results\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(["'])([^"']*)\2\s*\])""")


def map_parent(expression: str) -> str | None:
    """The node a map expression reads first, when it starts with ``results.<id>`` (or
    ``results["<id>"]``): the mapped node must depend on it. ``None`` for other expressions
    (``inputs.items``, any other Lua), which can only be checked when they run."""
    match = _MAP_RESULTS.match(expression)
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(3)


def check_map_options(
    node_id: str,
    deps: tuple[str, ...],
    map: object,
    max_parallel: object,
    allow_partial: object,
    max_items: object,
) -> None:
    """A :class:`SpecError` (path ``map``, ``max_parallel``, ...) naming the node if its
    fan-out options are wrong: ``map`` must be a non-empty Lua expression reading a node
    among ``deps`` (when it names one); the others need a ``map`` and must be positive
    integers (``allow_partial`` a bool)."""
    who = f"node {node_id!r}"
    if map is None:
        for key, value, unset in (
            ("max_parallel", max_parallel, None),
            ("allow_partial", allow_partial, False),
            ("max_items", max_items, None),
        ):
            if value is not unset:
                raise SpecError(f"{who}: {key} is for a mapped node; add map: too", path=key)
        return
    if not isinstance(map, str):
        raise TypeError(f"{who}: map must be a Lua expression (a str), got {type(map).__name__}")
    if not map.strip():
        raise SpecError(f"{who}: map must not be empty", path="map")
    parent = map_parent(map)
    if parent is not None and parent not in deps:
        raise SpecError(
            f"{who}: map reads results.{parent}, which is not one of its deps "
            f"({', '.join(deps) or 'none'}); add {parent!r} to deps",
            path="map",
        )
    for key, value in (("max_parallel", max_parallel), ("max_items", max_items)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{who}: {key} must be an int, got {type(value).__name__}")
        if not 1 <= value <= 0xFFFF_FFFF:
            raise SpecError(f"{who}: {key} must be a positive integer, got {value}", path=key)
    if not isinstance(allow_partial, bool):
        raise TypeError(f"{who}: allow_partial must be a bool, got {type(allow_partial).__name__}")


def check_trigger_rule(node_id: str, rule: object, path: str = "trigger_rule") -> str:
    """``rule`` if it names a trigger rule, else a :class:`SpecError` naming the node and
    the valid names."""
    if not isinstance(rule, str) or rule not in TRIGGER_RULES:
        close = difflib.get_close_matches(str(rule), TRIGGER_RULES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(
            f"node {node_id!r}: unknown trigger rule {rule!r}{hint}; "
            f"expected one of {', '.join(TRIGGER_RULES)}",
            path=path,
        )
    return rule


@dataclass(frozen=True, slots=True)
class WorkflowSpecModel:
    """A parsed spec: every field checked, nothing resolved (see the module docs)."""

    id: str
    nodes: tuple[NodeSpecModel, ...]
    version: str | None = None
    description: str | None = None
    max_parallel: int | None = None
    fail_fast: bool = False
    timeout: float | None = None
    #: The JSON Schema of the run's inputs (checked by :func:`dagengine.inputs.check_schema`).
    inputs: Mapping[str, Any] | None = None


# --- parsing ----------------------------------------------------------------------------------


class _Where:
    """The source of the document, for error messages."""

    __slots__ = ("source",)

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
    at: _Where,
    mapping: Mapping[Any, Any],
    allowed: tuple[str, ...],
    path: str,
    extra_hint: str = "",
) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise at.error(path or None, f"keys must be strings, got {_type_name(key)} {key!r}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else extra_hint
            raise at.error(f"{path}.{key}" if path else key, f"unknown key{hint}")


def _expect(at: _Where, value: object, types: tuple[type, ...], path: str, expected: str) -> None:
    # bool is an int subclass, but `retries: true` is a mistake, not 1.
    if isinstance(value, bool) and bool not in types:
        raise at.error(path, f"expected {expected}, got bool")
    if not isinstance(value, types):
        raise at.error(path, f"expected {expected}, got {_type_name(value)} {value!r}")


def _at_most(at: _Where, value: int, path: str, low: int, high: int) -> int:
    if value > high:
        raise at.error(path, f"{describe_int(value)} is out of range ({low}..{high})")
    return value


def _duration(at: _Where, value: object, path: str, *, positive: bool) -> float:
    try:
        seconds = parse_duration(value, what="duration")
    except (TypeError, ValueError) as exc:
        raise at.error(path, str(exc)) from None
    except OverflowError:  # an int too big for a float
        seconds = math.inf
    if positive and seconds <= 0:
        raise at.error(path, f"must be a positive duration, got {value!r}")
    if seconds > MAX_SECONDS:
        shown = describe_int(value) if isinstance(value, int) else repr(value)
        raise at.error(path, f"{shown} is out of range (at most {MAX_SECONDS:.0e} seconds)")
    return seconds


def parse(data: Mapping[str, Any], *, source: str | None = None) -> WorkflowSpecModel:
    """The model of a spec (a mapping as read from YAML/JSON), or a :class:`SpecError` naming
    the first field in the way; ``source`` (a file name) prefixes the messages. Pure: nothing
    is imported, compiled or run (see the module docs)."""
    at = _Where(source)
    if not isinstance(data, Mapping):
        raise at.error(None, f"a workflow spec must be a mapping, got {_type_name(data)}")
    _check_keys(at, data, _TOP_KEYS, "")
    if "id" not in data:
        raise at.error("id", "missing required key")
    wf_id = data["id"]
    _expect(at, wf_id, (str,), "id", "a string")
    if not WORKFLOW_ID.fullmatch(wf_id):
        raise at.error(
            "id", f"invalid workflow id {wf_id!r}: use letters, digits, '_', '-' and '.'"
        )
    version = data.get("version")
    if version is not None:
        _expect(at, version, (str,), "version", "a semver string like '1.2.0'")
        try:
            Version.parse(version)
        except ValueError as exc:
            raise at.error("version", str(exc)) from None
    description = data.get("description")
    if description is not None:
        _expect(at, description, (str,), "description", "a string")
    max_parallel = data.get("max_parallel")
    if max_parallel is not None:
        _expect(at, max_parallel, (int,), "max_parallel", "a positive integer")
        if max_parallel <= 0:
            raise at.error("max_parallel", f"must be a positive integer, got {max_parallel}")
        _at_most(at, max_parallel, "max_parallel", 1, MAX_PARALLEL)
    fail_fast = data.get("fail_fast", False)
    _expect(at, fail_fast, (bool,), "fail_fast", "true or false")
    timeout = data.get("timeout")
    run_timeout = _duration(at, timeout, "timeout", positive=True) if timeout is not None else None
    inputs = data.get("inputs")
    if inputs is not None:
        try:
            inputs = check_schema(inputs, "inputs")
        except SpecError as exc:
            prefix = f"{source}: " if source else ""
            raise SpecError(f"{prefix}{exc}", path=exc.path) from None
    if "nodes" not in data:
        raise at.error("nodes", "missing required key")
    nodes = data["nodes"]
    _expect(at, nodes, (list,), "nodes", "a list of nodes")
    if not nodes:
        raise at.error("nodes", "a workflow needs at least one node")
    return WorkflowSpecModel(
        id=wf_id,
        nodes=tuple(_parse_node(at, raw, f"nodes[{index}]") for index, raw in enumerate(nodes)),
        version=version,
        description=description,
        max_parallel=max_parallel,
        fail_fast=fail_fast,
        timeout=run_timeout,
        inputs=inputs,
    )


def _parse_node(at: _Where, raw: object, path: str) -> NodeSpecModel:
    _expect(at, raw, (dict, Mapping), path, "a mapping with id, deps and an executor key")
    assert isinstance(raw, Mapping)
    present = [key for key in EXECUTOR_KINDS if key in raw]
    hint = "" if present else (f" (not an executor kind; use one of {', '.join(EXECUTOR_KINDS)})")
    _check_keys(at, raw, _NODE_KEYS, path, hint)
    if "id" not in raw:
        raise at.error(f"{path}.id", "missing required key")
    node_id = raw["id"]
    _expect(at, node_id, (str,), f"{path}.id", "a string")
    if not node_id:
        raise at.error(f"{path}.id", "must not be empty")

    deps = raw.get("deps", [])
    _expect(at, deps, (list,), f"{path}.deps", "a list of node ids")
    for i, dep in enumerate(deps):
        _expect(at, dep, (str,), f"{path}.deps[{i}]", "a node id string")
    if len(set(deps)) != len(deps):
        dup = next(d for d in deps if deps.count(d) > 1)
        raise at.error(f"{path}.deps", f"lists {dup!r} more than once")

    if not present:
        raise at.error(
            path, f"node {node_id!r} has no executor: add one of {', '.join(EXECUTOR_KINDS)}"
        )
    if len(present) > 1:
        raise at.error(
            path, f"node {node_id!r} has several executors ({', '.join(present)}); keep one"
        )
    kind = present[0]
    value = raw[kind]
    executor_path = f"{path}.{kind}"

    limits = raw.get("limits")
    if limits is not None and kind != "lua":
        raise at.error(f"{path}.limits", "limits apply to lua nodes only")

    executor: ExecutorSpec
    if kind == "lua":
        _expect(at, value, (str,), executor_path, "Lua source code (a string)")
        max_instructions, max_memory = _parse_limits(at, limits, f"{path}.limits")
        executor = LuaSpec(value, max_instructions, max_memory)
    elif kind == "python":
        _expect(at, value, (str,), executor_path, "an import path 'module:function'")
        executor = PythonSpec(value)
    elif kind == "workflow":
        _expect(at, value, (str,), executor_path, "a workflow reference like 'child@^1.4'")
        executor = _parse_workflow_ref(at, value, executor_path)
    else:
        if value is not True:
            raise at.error(executor_path, f"must be true, got {value!r}")
        executor = NoopSpec()

    retries = raw.get("retries", 0)
    _expect(at, retries, (int,), f"{path}.retries", "a non-negative integer")
    if retries < 0:
        raise at.error(f"{path}.retries", f"must be >= 0, got {describe_int(retries)}")
    _at_most(at, retries, f"{path}.retries", 0, MAX_RETRIES)
    backoff = _parse_backoff(at, raw.get("retry_backoff"), f"{path}.retry_backoff")
    timeout = raw.get("timeout")
    node_timeout = (
        _duration(at, timeout, f"{path}.timeout", positive=True) if timeout is not None else None
    )
    when = raw.get("when")
    if when is not None:
        _expect(at, when, (str,), f"{path}.when", "a Lua boolean expression (a string)")
        if not when.strip():
            raise at.error(f"{path}.when", "must not be empty")
    rule = raw.get("trigger_rule", "all_success")
    try:
        rule = check_trigger_rule(node_id, rule, f"{path}.trigger_rule")
    except SpecError as exc:
        raise at.error(f"{path}.trigger_rule", str(exc)) from None
    fan_out = {key: raw.get(key) for key in ("map", "max_parallel", "max_items")}
    allow_partial = raw.get("allow_partial", False)
    try:
        check_map_options(node_id, tuple(deps), allow_partial=allow_partial, **fan_out)
    except (SpecError, TypeError) as exc:
        key = exc.path if isinstance(exc, SpecError) and exc.path else "map"
        raise at.error(f"{path}.{key}", str(exc)) from None
    try:
        cache = check_cache(node_id, raw.get("cache"), mapped=fan_out["map"] is not None)
    except SpecError as exc:
        raise at.error(f"{path}.{exc.path}", str(exc)) from None
    return NodeSpecModel(
        node_id,
        executor,
        deps=tuple(deps),
        retries=retries,
        retry_backoff=backoff,
        timeout=node_timeout,
        when=when,
        trigger_rule=rule,
        allow_partial=allow_partial,
        cache=cache,
        **fan_out,
    )


def _parse_limits(at: _Where, limits: object, path: str) -> tuple[int | None, int | None]:
    if limits is None:
        return None, None
    _expect(at, limits, (dict, Mapping), path, "a mapping with instructions and/or memory")
    assert isinstance(limits, Mapping)
    _check_keys(at, limits, _LIMIT_KEYS, path)
    instructions = limits.get("instructions")
    if instructions is not None:
        _expect(at, instructions, (int,), f"{path}.instructions", "a positive integer")
        if instructions <= 0:
            raise at.error(
                f"{path}.instructions", f"must be positive, got {describe_int(instructions)}"
            )
        _at_most(at, instructions, f"{path}.instructions", 1, MAX_INSTRUCTIONS)
    memory = limits.get("memory")
    memory_bytes = None
    if memory is not None:
        try:
            memory_bytes = parse_size(memory, what="memory")
        except (TypeError, ValueError) as exc:
            raise at.error(f"{path}.memory", str(exc)) from None
        _at_most(at, memory_bytes, f"{path}.memory", 1, MAX_MEMORY)
    return instructions, memory_bytes


def _parse_backoff(at: _Where, raw: object, path: str) -> RetryBackoff:
    if raw is None:
        return DEFAULT_BACKOFF
    _expect(at, raw, (dict, Mapping), path, "a mapping with initial, factor and/or max")
    assert isinstance(raw, Mapping)
    _check_keys(at, raw, _BACKOFF_KEYS, path)
    initial = DEFAULT_BACKOFF.initial
    factor = DEFAULT_BACKOFF.factor
    maximum = DEFAULT_BACKOFF.max
    if "initial" in raw:
        initial = _duration(at, raw["initial"], f"{path}.initial", positive=False)
    if "max" in raw:
        maximum = _duration(at, raw["max"], f"{path}.max", positive=False)
    if "factor" in raw:
        factor = raw["factor"]
        _expect(at, factor, (int, float), f"{path}.factor", "a number >= 1")
        if not factor >= 1:
            raise at.error(f"{path}.factor", f"must be >= 1, got {factor!r}")
        if not factor <= MAX_BACKOFF_FACTOR:
            shown = describe_int(factor) if isinstance(factor, int) else repr(factor)
            raise at.error(f"{path}.factor", f"{shown} is out of range (1..{MAX_BACKOFF_FACTOR})")
    return RetryBackoff(initial, float(factor), maximum)


def _parse_workflow_ref(at: _Where, ref: str, path: str) -> WorkflowRef:
    wf_id, _, version_range = ref.partition("@")
    wf_id = wf_id.strip()
    if not WORKFLOW_ID.fullmatch(wf_id):
        raise at.error(
            path,
            f"invalid workflow reference {ref!r}: expected 'workflow-id' or 'workflow-id@range'",
        )
    if "@" in ref and not version_range.strip():
        raise at.error(path, f"invalid workflow reference {ref!r}: empty version range after '@'")
    version_range = version_range.strip() or "*"
    try:
        VersionRange.parse(version_range)
    except ValueError as exc:
        raise at.error(path, str(exc)) from None
    return WorkflowRef(wf_id, version_range)


def parse_workflow_ref(ref: str, *, path: str = "workflow") -> WorkflowRef:
    """A ``workflow:`` reference (``child``, ``child@^1.4``) parsed; a :class:`SpecError` at
    ``path`` if it is malformed."""
    return _parse_workflow_ref(_Where(None), ref, path)


# --- writing ----------------------------------------------------------------------------------


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def to_dict(model: WorkflowSpecModel) -> dict[str, Any]:
    """The canonical spec dict of ``model`` (see :mod:`dagengine.spec`):
    ``to_dict(parse(d)) == d`` for a canonical ``d``."""
    spec: dict[str, Any] = {"id": model.id}
    if model.version is not None:
        spec["version"] = model.version
    if model.description is not None:
        spec["description"] = model.description
    if model.inputs is not None:
        spec["inputs"] = copy.deepcopy(dict(model.inputs))
    if model.max_parallel is not None:
        spec["max_parallel"] = model.max_parallel
    if model.fail_fast:
        spec["fail_fast"] = True
    if model.timeout is not None:
        spec["timeout"] = format_duration(model.timeout)
    spec["nodes"] = [_node_to_dict(node) for node in model.nodes]
    return spec


def _node_to_dict(node: NodeSpecModel) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id}
    if node.deps:
        out["deps"] = list(node.deps)
    executor = node.executor
    limits: dict[str, Any] = {}
    if isinstance(executor, NoopSpec):
        out["noop"] = True
    elif isinstance(executor, LuaSpec):
        out["lua"] = executor.code
        if executor.max_instructions is not None:
            limits["instructions"] = executor.max_instructions
        if executor.max_memory is not None:
            limits["memory"] = format_size(executor.max_memory)
    elif isinstance(executor, WorkflowRef):
        out["workflow"] = executor.reference
    else:
        out["python"] = executor.import_path
    if node.retries:
        out["retries"] = node.retries
    backoff = node.retry_backoff
    if backoff != DEFAULT_BACKOFF:
        entry: dict[str, Any] = {}
        if backoff.initial != DEFAULT_BACKOFF.initial:
            entry["initial"] = format_duration(backoff.initial)
        if backoff.factor != DEFAULT_BACKOFF.factor:
            entry["factor"] = _number(backoff.factor)
        if backoff.max != DEFAULT_BACKOFF.max:
            entry["max"] = format_duration(backoff.max)
        out["retry_backoff"] = entry
    if node.timeout is not None:
        out["timeout"] = format_duration(node.timeout)
    if limits:
        out["limits"] = limits
    if node.when is not None:
        out["when"] = node.when
    if node.trigger_rule != "all_success":
        out["trigger_rule"] = node.trigger_rule
    if node.map is not None:
        out["map"] = node.map
        if node.max_parallel is not None:
            out["max_parallel"] = node.max_parallel
        if node.allow_partial:
            out["allow_partial"] = True
        if node.max_items is not None:
            out["max_items"] = node.max_items
    if node.cache is not None:
        out["cache"] = _cache_to_dict(node.cache)
    return out


def _cache_to_dict(cache: CachePolicy) -> bool | dict[str, Any]:
    if cache == CachePolicy():
        return True
    entry: dict[str, Any] = {}
    if cache.key is not None:
        entry["key"] = cache.key
    if cache.ttl is not None:
        entry["ttl"] = format_duration(cache.ttl)
    return entry
