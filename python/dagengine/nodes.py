"""A workflow's parts: :class:`Node`, the executors, :class:`NodeContext`; and binding a
parsed spec's node (:class:`~dagengine.spec_model.NodeSpecModel`) to them and back.

:func:`node_from_model` is the node half of :func:`dagengine.workflow.bind`: it resolves a
``python:`` import path (:func:`resolve_import_path`, which imports user code) and builds
the executor. :func:`node_to_model` is the way back, for :meth:`DAG.to_spec`: it names a
Python node's function by its import path, or says why it has none.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from dagengine import _core
from dagengine._semver import VersionRange
from dagengine._units import parse_duration
from dagengine.exceptions import ImportPathError, LuaSyntaxError, SpecError
from dagengine.spec_model import (
    DEFAULT_BACKOFF,
    CachePolicy,
    ExecutorSpec,
    LuaSpec,
    NodeSpecModel,
    NoopSpec,
    PythonSpec,
    RetryBackoff,
    WorkflowRef,
    check_cache,
    check_map_options,
    check_trigger_rule,
)

__all__ = [
    "AnyExecutor",
    "Executor",
    "LuaExecutor",
    "Node",
    "NodeContext",
    "NodeOutput",
    "NoopExecutor",
    "PythonExecutor",
    "RetryBackoff",
    "SubWorkflow",
    "SubWorkflowRunner",
    "When",
    "check_positive_int",
    "check_timeout",
    "check_when_syntax",
    "node_from_model",
    "node_to_model",
    "resolve_import_path",
    "subworkflow_inputs",
]

#: What a node returns: a dict of JSON-like values, or ``None`` (meaning ``{}``).
NodeOutput: TypeAlias = "dict[str, Any] | None"

#: A node's condition: a Lua boolean expression over ``inputs`` and ``results``, or a Python
#: callable taking the node's :class:`NodeContext` and returning a bool.
When: TypeAlias = "str | Callable[[NodeContext], bool]"

#: Called by a sub-workflow node to run its child workflow and return the child's output.
#: The orchestrator passes one to :meth:`DAG.run`; without it such nodes fail.
SubWorkflowRunner: TypeAlias = "Callable[[SubWorkflow, NodeContext], dict[str, Any]]"

# --- node context -----------------------------------------------------------------------------

#: What a Python node receives: ``fn(ctx)``. ``inputs`` are the run's inputs (read-only),
#: ``results`` maps each parent's id to that parent's output (a dict of the call's own,
#: converted when first read), ``node_id``/``run_id``/``attempt`` (1 for the first try)
#: identify the call, and ``cancelled`` turns true when the run is cancelled or the node
#: times out, so long-running code can stop early. In an item of a mapped node (``node_id``
#: like ``square[3]``), ``item`` is the item and ``index`` its position (from 0); elsewhere
#: both are ``None``. A native class: the core builds one per call and calls the node with
#: it directly (``NodeContext(inputs, results, node_id, run_id, attempt, cancel=None,
#: item=None)`` makes one by hand, e.g. in a test).
NodeContext = _core.NodeContext


# --- executors --------------------------------------------------------------------------------


@runtime_checkable
class Executor(Protocol):
    """A custom executor: any object with ``execute(ctx)``.

    ``execute`` receives a :class:`NodeContext` and returns a dict of JSON-like values, ``None``,
    or an awaitable of either (``async def execute``). Raising an exception fails the node; its
    type, message and traceback are recorded. Pass the object as a node's executor::

        class Double:
            def execute(self, ctx):
                return {"value": ctx.results["source"]["value"] * 2}

        dag.add_node(Node("double", ["source"], Double()))
    """

    def execute(self, ctx: NodeContext) -> NodeOutput | Awaitable[NodeOutput]:
        """Run the node."""
        ...


@dataclass(frozen=True, slots=True)
class NoopExecutor:
    """Does nothing and returns ``{}``; runs entirely in the core (tests, benchmarks)."""


@dataclass(frozen=True, slots=True, init=False)
class LuaExecutor:
    """Runs a Lua 5.4 script in the core's sandbox.

    The script sees globals ``inputs``, ``results`` and ``ctx`` (``node_id``, ``run_id``,
    ``attempt``) and returns a table or nothing. ``max_instructions`` and ``max_memory`` (bytes)
    bound the script; ``None`` uses the core's defaults: no instruction limit and 64 MiB. An
    instruction limit is counted exactly, from the first instruction, at about a tenth of a
    short script's time. The wall-time limit is the node's ``timeout``, or 10 s without one.
    """

    code: str
    max_instructions: int | None = None
    max_memory: int | None = None

    def __init__(
        self, code: str, *, max_instructions: int | None = None, max_memory: int | None = None
    ) -> None:
        if not isinstance(code, str):
            raise TypeError(f"LuaExecutor code must be a str, got {type(code).__name__}")
        for name, value in (("max_instructions", max_instructions), ("max_memory", max_memory)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise SpecError(f"{name} must be positive, got {value}", path=f"limits.{name}")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "max_instructions", max_instructions)
        object.__setattr__(self, "max_memory", max_memory)


@dataclass(frozen=True, slots=True, init=False)
class PythonExecutor:
    """Calls ``fn(ctx)`` with a :class:`NodeContext`; ``fn`` may be ``async def``.

    ``fn`` returns a dict of JSON-like values or ``None``; an exception fails the node with its
    type, message and traceback. ``import_path`` (``"module:qualname"``) is what
    :meth:`DAG.to_spec` writes for this node; by default it is derived from ``fn``, which works
    for module-level functions but not for lambdas or closures.
    """

    fn: Callable[[NodeContext], Any]
    import_path: str | None = None

    def __init__(self, fn: Callable[[NodeContext], Any], *, import_path: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"PythonExecutor needs a callable, got {type(fn).__name__}")
        if import_path is not None and not isinstance(import_path, str):
            raise TypeError(f"import_path must be a str, got {type(import_path).__name__}")
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "import_path", import_path)


@dataclass(frozen=True, slots=True)
class SubWorkflow:
    """Runs another registered workflow as one node: ``SubWorkflow("reporting", "^1.4")``.

    The child's inputs are this node's inputs and results; its output is the child's outputs.
    The reference is resolved by the orchestrator at run start; a plain :meth:`DAG.run` without
    an orchestrator fails such a node with a :class:`~dagengine.SubWorkflowError`.
    """

    workflow_id: str
    version_range: str = "*"

    def __post_init__(self) -> None:
        if not isinstance(self.workflow_id, str) or not self.workflow_id:
            raise TypeError("SubWorkflow workflow_id must be a non-empty str")
        if "@" in self.workflow_id:
            raise SpecError(
                f"SubWorkflow workflow_id {self.workflow_id!r} contains '@'; pass the range "
                "separately: SubWorkflow('child', '^1.4')",
                path="workflow",
            )
        try:
            VersionRange.parse(self.version_range)
        except ValueError as exc:
            raise SpecError(str(exc), path="workflow") from None

    @property
    def reference(self) -> str:
        """``child@range``, or just ``child`` for any version."""
        if self.version_range.strip() == "*":
            return self.workflow_id
        return f"{self.workflow_id}@{self.version_range}"


def subworkflow_inputs(ctx: NodeContext) -> dict[str, Any]:
    """The inputs a sub-workflow node gives its child: the parent run's inputs, with each of
    the node's dependencies' outputs added under that dependency's id; for an item of a
    mapped sub-workflow node, also ``item`` and ``index``."""
    inputs = {**ctx.inputs, **ctx.results}
    if ctx.index is not None:
        inputs["item"] = ctx.item
        inputs["index"] = ctx.index
    return inputs


#: What a node's ``executor`` may be.
AnyExecutor: TypeAlias = "NoopExecutor | LuaExecutor | PythonExecutor | SubWorkflow | Executor"


# --- nodes ------------------------------------------------------------------------------------


def check_timeout(value: object, field: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value, what=field)
    except ValueError as exc:
        raise SpecError(str(exc), path=field) from None
    if seconds <= 0:
        raise SpecError(f"{field} must be positive, got {value!r}", path=field)
    return seconds


def check_positive_int(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise SpecError(f"{field} must be positive, got {value}", path=field)
    return value


# Not slotted: a decorated workflow's task calls make their nodes as a copy of the task's
# template node's __dict__ (dagengine.authoring), a third of the work of setting 13 slots.
@dataclass(frozen=True, init=False)
class Node:
    """One step of a workflow: ``Node("load", ["transform"], PythonExecutor(save))``.

    ``deps`` are the ids of the nodes whose outputs this node needs (its parents). A failing
    node is tried ``retries`` more times, waiting as ``retry_backoff`` says; ``timeout`` (seconds
    or a duration string like ``"10s"``) bounds each attempt.

    ``when`` is a condition checked before the first attempt: a Lua boolean expression over
    ``inputs`` and ``results`` (``"results.extract.rows > 0"``), or a callable of the node's
    :class:`NodeContext` returning a bool (in-process runs only; a spec holds Lua). False skips
    the node (``skip_reason`` ``condition``); anything but a bool fails it. ``trigger_rule``
    (Airflow's names, see :data:`~dagengine.spec_model.TRIGGER_RULES`) says when the node runs
    given how its parents ended; the default ``all_success`` runs it when all succeeded.

    ``map`` fans the node out at run time: a Lua expression over ``inputs`` and ``results``
    giving a list (``"results.extract.rows"``, ``"inputs.items"``); the node runs once per
    item (ids ``square[0]``, ``square[1]``, ...; the item is ``ctx.item``, its index
    ``ctx.index``, in Lua ``item`` and ``index``) and its output is the list of the items'
    outputs, in order. ``max_parallel`` bounds its items running at once; with
    ``allow_partial`` a failed item is ``None`` in that list instead of failing the node;
    more than ``max_items`` items (default 100,000) fail it.

    ``cache`` caches the node's output: ``True`` (the key hashes the node's code, the run's
    inputs and the parents' outputs), or ``{"key": <Lua expression over inputs and results
    giving a string or a number>, "ttl": "1h"}`` (or a
    :class:`~dagengine.spec_model.CachePolicy`). A run that finds the key does not execute
    the node: it succeeds with the stored output (``NodeResult.cached_from`` names the run
    that computed it). See :mod:`dagengine.cache`.
    """

    id: str
    deps: tuple[str, ...] = ()
    executor: AnyExecutor = NoopExecutor()
    retries: int = 0
    retry_backoff: RetryBackoff = DEFAULT_BACKOFF
    timeout: float | None = None
    when: When | None = None
    trigger_rule: str = "all_success"
    map: str | None = None
    max_parallel: int | None = None
    allow_partial: bool = False
    max_items: int | None = None
    cache: CachePolicy | None = None

    def __init__(
        self,
        id: str,
        deps: Iterable[str] = (),
        executor: AnyExecutor | None = None,
        *,
        retries: int = 0,
        retry_backoff: RetryBackoff | None = None,
        timeout: float | str | None = None,
        when: When | None = None,
        trigger_rule: str = "all_success",
        map: str | None = None,
        max_parallel: int | None = None,
        allow_partial: bool = False,
        max_items: int | None = None,
        cache: bool | Mapping[str, Any] | CachePolicy | None = None,
    ) -> None:
        if not isinstance(id, str):
            raise TypeError(f"Node id must be a str, got {type(id).__name__}")
        if not id:
            raise SpecError("Node id must not be empty", path="id")
        if isinstance(deps, (str, bytes)) or not isinstance(deps, Iterable):
            # A bare string would silently become a list of one-character ids.
            raise TypeError(
                f"node {id!r}: deps must be a list of node ids, got {type(deps).__name__}"
            )
        dep_tuple = tuple(deps)
        seen: set[str] = set()
        for dep in dep_tuple:
            if not isinstance(dep, str):
                raise TypeError(f"node {id!r}: deps must be strs, got {type(dep).__name__}")
            if dep in seen:
                raise SpecError(f"node {id!r}: deps lists {dep!r} twice", path="deps")
            seen.add(dep)
        if executor is None:
            executor = NoopExecutor()
        elif not isinstance(
            executor, (NoopExecutor, LuaExecutor, PythonExecutor, SubWorkflow)
        ) and not callable(getattr(executor, "execute", None)):
            hint = " (wrap a function in PythonExecutor(fn))" if callable(executor) else ""
            raise TypeError(
                f"node {id!r}: executor must be LuaExecutor, PythonExecutor, NoopExecutor, "
                f"SubWorkflow or an object with execute(ctx), got {type(executor).__name__}{hint}"
            )
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"node {id!r}: retries must be an int, got {type(retries).__name__}")
        if retries < 0:
            raise SpecError(f"node {id!r}: retries must be >= 0, got {retries}", path="retries")
        if retry_backoff is None:
            retry_backoff = DEFAULT_BACKOFF
        elif not isinstance(retry_backoff, RetryBackoff):
            raise TypeError(
                f"node {id!r}: retry_backoff must be a RetryBackoff, "
                f"got {type(retry_backoff).__name__}"
            )
        try:
            checked_timeout = check_timeout(timeout, "timeout")
        except (SpecError, TypeError) as exc:
            raise type(exc)(f"node {id!r}: {exc}", **_spec_kwargs(exc)) from None
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "deps", dep_tuple)
        object.__setattr__(self, "executor", executor)
        object.__setattr__(self, "retries", retries)
        object.__setattr__(self, "retry_backoff", retry_backoff)
        object.__setattr__(self, "timeout", checked_timeout)
        object.__setattr__(self, "when", _check_when(id, when))
        object.__setattr__(self, "trigger_rule", check_trigger_rule(id, trigger_rule))
        check_map_options(id, dep_tuple, map, max_parallel, allow_partial, max_items)
        object.__setattr__(self, "map", map)
        object.__setattr__(self, "max_parallel", max_parallel)
        object.__setattr__(self, "allow_partial", allow_partial)
        object.__setattr__(self, "max_items", max_items)
        policy = check_cache(id, cache, mapped=map is not None)
        if policy is not None and policy.key is not None:
            check_when_syntax(id, policy.key, "cache.key")
        object.__setattr__(self, "cache", policy)

    @property
    def kind(self) -> str:
        """``noop``, ``lua``, ``python``, ``workflow`` or ``custom``."""
        executor = self.executor
        if isinstance(executor, NoopExecutor):
            return "noop"
        if isinstance(executor, LuaExecutor):
            return "lua"
        if isinstance(executor, PythonExecutor):
            return "python"
        if isinstance(executor, SubWorkflow):
            return "workflow"
        return "custom"


def _check_when(node_id: str, when: object) -> When | None:
    if when is None:
        return None
    if isinstance(when, str):
        if not when.strip():
            raise SpecError(f"node {node_id!r}: when must not be empty", path="when")
        return when
    if callable(when):
        return when
    raise TypeError(
        f"node {node_id!r}: when must be a Lua expression (str) or a callable of ctx, "
        f"got {type(when).__name__}"
    )


def check_when_syntax(node_id: str, expression: str, key: str = "when") -> None:
    """A :class:`LuaSyntaxError` naming the node if its ``when`` (or its ``map``: ``key``)
    does not compile (as the core compiles it: one expression, on the lines it was written
    on)."""
    try:
        _core.lua_check(f"return ({expression}\n)", node_id)
    except LuaSyntaxError as exc:
        detail = exc.message.removeprefix(f"node {node_id!r}: ")
        raise LuaSyntaxError(
            f"node {node_id!r}: {key}: {detail}", line=exc.line, node_id=node_id
        ) from None


def _spec_kwargs(exc: Exception) -> dict[str, Any]:
    return {"path": exc.path} if isinstance(exc, SpecError) else {}


# --- binding: spec model <-> node -------------------------------------------------------------

_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


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


def node_from_model(model: NodeSpecModel) -> Node:
    """The node a parsed spec's node stands for: ``python:`` paths are imported now
    (:class:`ImportPathError`); Lua is compiled when the node is added to a DAG."""
    spec = model.executor
    executor: AnyExecutor
    if isinstance(spec, LuaSpec):
        executor = LuaExecutor(
            spec.code, max_instructions=spec.max_instructions, max_memory=spec.max_memory
        )
    elif isinstance(spec, PythonSpec):
        executor = resolve_import_path(spec.import_path, node_id=model.id)
    elif isinstance(spec, WorkflowRef):
        executor = SubWorkflow(spec.workflow_id, spec.version_range)
    else:
        executor = NoopExecutor()
    return Node(
        model.id,
        model.deps,
        executor,
        retries=model.retries,
        retry_backoff=model.retry_backoff,
        timeout=model.timeout,
        when=model.when,
        trigger_rule=model.trigger_rule,
        map=model.map,
        max_parallel=model.max_parallel,
        allow_partial=model.allow_partial,
        max_items=model.max_items,
        cache=model.cache,
    )


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


def node_to_model(node: Node, path: str) -> NodeSpecModel:
    """``node`` as a spec's node (``path``, like ``nodes[2]``, names it in errors): a
    :class:`SpecError` if it runs Python code that has no import path."""
    executor = node.executor
    spec: ExecutorSpec
    if isinstance(executor, NoopExecutor):
        spec = NoopSpec()
    elif isinstance(executor, LuaExecutor):
        spec = LuaSpec(executor.code, executor.max_instructions, executor.max_memory)
    elif isinstance(executor, SubWorkflow):
        spec = WorkflowRef(executor.workflow_id, executor.version_range)
    else:
        spec = PythonSpec(_python_path(node, f"{path}.python"))
    if node.when is not None and not isinstance(node.when, str):
        raise SpecError(
            f"node {node.id!r}: a Python callable as when only works in-process; a spec's "
            'when is a Lua expression (like "results.check.ok")',
            path=f"{path}.when",
        )
    return NodeSpecModel(
        node.id,
        spec,
        deps=node.deps,
        retries=node.retries,
        retry_backoff=node.retry_backoff,
        timeout=node.timeout,
        when=node.when,
        trigger_rule=node.trigger_rule,
        map=node.map,
        max_parallel=node.max_parallel,
        allow_partial=node.allow_partial,
        max_items=node.max_items,
        cache=node.cache,
    )
