"""Decorators: :func:`task` and :func:`workflow`, the short way to write a workflow.

::

    @de.task(retries=2)
    def extract(day: str) -> dict:
        return {"rows": [1, 2, 3]}

    @de.task
    def total(rows: list[int], factor: int) -> dict:
        return {"sum": sum(rows) * factor}

    @de.workflow("numbers", version="1.0.0")
    def numbers(day: str, factor: int = 1):
        e = extract(day)
        return total(e["rows"], factor)

The workflow function runs once, when it is decorated, to record the graph. Inside it a task
call returns a :class:`Ref` (a reference to the node's output), not a value; a :class:`Ref`,
or an item of one (``e["rows"]``, ``e[0]``), passed to another task is a dependency, delivered
as the value when the run gets there; anything else is a constant. The workflow's parameters
are references to the run's ``inputs``. The result, :class:`DecoratedWorkflow`, is a :class:`DAG`.

How a spec names these nodes: every node of a decorated workflow is the Python node
``module:workflow.call_node``, which looks up the task call recorded for ``ctx.node_id``. An
engine importing that path runs the workflow function once (at import) and so knows every
node's task and arguments, without them being written in the spec.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import json
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

from dagengine._refs import CONTAINERS, ITEM, Call, Ref, compile_getter, item_of, walk
from dagengine.exceptions import SpecError
from dagengine.inputs import schema_from_signature
from dagengine.nodes import Node, NodeContext, PythonExecutor, When
from dagengine.results import RunResult
from dagengine.spec_model import CachePolicy, RetryBackoff
from dagengine.workflow import DAG

__all__ = ["DecoratedWorkflow", "Ref", "Task", "task", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")


class _Recording(threading.local):
    """The workflow being recorded on this thread (``None`` outside a workflow function): a
    class default, so a task call reads it with one attribute lookup."""

    recorder: _Recorder | None = None


_recording = _Recording()


def _current() -> _Recorder | None:
    return _recording.recorder


# --- tasks ------------------------------------------------------------------------------------


class _Binder:
    """Checks a call's arguments against the function's parameters while recording, so that a
    wrong call is a ``TypeError`` at definition time, not a failure at run time: a fast path
    for plain parameters (whose required ones come first, as Python wants), and
    :meth:`inspect.Signature.bind` for the rest and for every error message."""

    __slots__ = ("most", "name", "names", "params", "required", "sig", "simple")

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.name = name
        self.sig = inspect.signature(fn)
        params = list(self.sig.parameters.values())
        self.simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self.params = [p.name for p in params]
        self.names = {p.name: i for i, p in enumerate(params)}
        self.required = sum(1 for p in params if p.default is p.empty)
        # The most positional arguments a call without keywords may pass and need no other
        # check (-1: always check): what the recorder compares inline.
        self.most = len(params) if self.simple else -1

    def check(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        given = len(args)
        if self.simple and given <= len(self.params):
            if not kwargs:
                if given >= self.required:
                    return
            elif all(self.names.get(key, -1) >= given for key in kwargs) and all(
                self.params[i] in kwargs for i in range(given, self.required)
            ):
                return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name}: {exc}") from None


class Task(Generic[P, R]):
    """A function made a task by :func:`task`.

    Called inside a :func:`workflow` function, it records a node and returns a :class:`Ref`
    to the node's output (typed as the function's return type, so type checkers follow the
    workflow as written); called anywhere else, it just runs the function. The node's
    callable returns what the function returns: a dict of JSON data or ``None``.
    """

    def __init__(self, fn: Callable[P, R], id: str | None, options: Mapping[str, Any]) -> None:
        if not callable(fn):
            raise TypeError(f"@task decorates a function, got {type(fn).__name__}")
        name = id if id is not None else getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"task id must be a non-empty str, got {name!r}")
        # The options are a Node's keyword arguments, passed through as given: checked now,
        # with Node's own messages, and kept as a template each call's node is cloned from.
        # The fan-out ones apply to mapped calls only (see map()).
        self.map_options = {key: options[key] for key in _MAP_OPTIONS if key in options}
        node_options = {key: value for key, value in options.items() if key not in _MAP_OPTIONS}
        self.template = Node(name, (), None, **node_options)
        if self.map_options:
            Node(name, ("_",), None, map="{}", **self.map_options)
        self.node_fields = vars(self.template)
        self.fn = fn
        self.id = name
        self.options: Mapping[str, Any] = dict(options)
        self._binder = _Binder(fn, name)
        functools.update_wrapper(self, fn)

    def with_options(
        self,
        *,
        id: str | None = None,
        retries: int | None = None,
        timeout: float | str | None = None,
        retry_backoff: RetryBackoff | None = None,
        when: When | None = None,
        trigger_rule: str | None = None,
        max_parallel: int | None = None,
        allow_partial: bool | None = None,
        max_items: int | None = None,
        cache: bool | Mapping[str, Any] | CachePolicy | None = None,
    ) -> Task[P, R]:
        """A copy of this task with another node id or other node options:
        ``square.with_options(id="sq", retries=3)(x)``; options not given stay as they were."""
        options = dict(self.options)
        given = {
            "retries": retries,
            "timeout": timeout,
            "retry_backoff": retry_backoff,
            "when": when,
            "trigger_rule": trigger_rule,
            "max_parallel": max_parallel,
            "allow_partial": allow_partial,
            "max_items": max_items,
            "cache": cache,
        }
        options.update({key: value for key, value in given.items() if value is not None})
        return Task(self.fn, id if id is not None else self.id, options)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        recorder = _recording.recorder
        if recorder is None:
            return self.fn(*args, **kwargs)
        return recorder.call(self, args, kwargs)  # type: ignore[return-value]

    def map(self, items: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Fan out over ``items``: one node instance per item, at run time.

        Inside a :func:`workflow` function ``items`` is a :class:`Ref` to a list (``e["rows"]``,
        or a workflow parameter) or a constant list; each instance calls the function with its
        item as the first argument (the other arguments as for a plain call), and the node's
        output, what later tasks receive, is the list of the calls' results in item order.
        Options for the fan-out (``max_parallel``, ``allow_partial``, ``max_items``) come from
        :func:`task` or :meth:`with_options`. Outside a workflow it just calls the function on
        each item and returns the list.
        """
        recorder = _current()
        if recorder is None:
            return [self.fn(item, *args, **kwargs) for item in items]
        return recorder.map(self, items, args, kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.id}>"


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    id: str | None = None,
    retries: int = 0,
    timeout: float | str | None = None,
    retry_backoff: RetryBackoff | None = None,
    when: When | None = None,
    trigger_rule: str = "all_success",
    max_parallel: int | None = None,
    allow_partial: bool = False,
    max_items: int | None = None,
    cache: bool | Mapping[str, Any] | CachePolicy | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    id: str | None = None,
    retries: int = 0,
    timeout: float | str | None = None,
    retry_backoff: RetryBackoff | None = None,
    when: When | None = None,
    trigger_rule: str = "all_success",
    max_parallel: int | None = None,
    allow_partial: bool = False,
    max_items: int | None = None,
    cache: bool | Mapping[str, Any] | CachePolicy | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make ``fn`` a task: ``@task`` or ``@task(retries=2, timeout="10s")``.

    ``id`` is the node id its calls get (default: the function's name; a second call in the
    same workflow gets ``name_2``, and so on); ``retries``, ``timeout``, ``retry_backoff``,
    ``when`` and ``trigger_rule`` are the node's, as for :class:`Node` (a Lua ``when`` names
    other nodes by their ids, which are the task ids); ``max_parallel``, ``allow_partial``
    and ``max_items`` apply when the task is mapped (:meth:`Task.map`). ``cache`` caches its
    calls' outputs, as :class:`Node`'s: the default key hashes the function's qualified name
    and source, the call's constant arguments, the run's inputs and the parents' outputs.
    """
    options: dict[str, Any] = {"retries": retries, "timeout": timeout}
    if retry_backoff is not None:
        options["retry_backoff"] = retry_backoff
    if when is not None:
        options["when"] = when
    if trigger_rule != "all_success":
        options["trigger_rule"] = trigger_rule
    if max_parallel is not None:
        options["max_parallel"] = max_parallel
    if allow_partial:
        options["allow_partial"] = allow_partial
    if max_items is not None:
        options["max_items"] = max_items
    if cache is not None and cache is not False:
        options["cache"] = cache

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        return Task(function, id, options)

    if fn is None:
        return decorate
    return decorate(fn)


# --- recording a workflow ---------------------------------------------------------------------


class _Recorder:
    """Turns task calls into nodes of the workflow being defined."""

    __slots__ = ("calls", "counts", "deps", "import_path", "nodes")

    def __init__(self, nodes: dict[str, Node], import_path: str | None) -> None:
        self.nodes = nodes
        self.import_path = import_path
        self.calls: dict[str, Call] = {}
        self.counts: dict[str, int] = {}
        self.deps: dict[str, None] = {}

    def depend(self, ref: Ref) -> None:
        node = ref.node_id
        if node is None:
            return
        if node not in self.calls:
            raise TypeError(
                f"{ref!r} refers to a node of another workflow; a reference is only valid in "
                "the workflow function that made it"
            )
        self.deps[node] = None

    def node_id(self, base: str) -> str:
        count = self.counts.get(base, 0) + 1
        node_id = base if count == 1 else f"{base}_{count}"
        while node_id in self.calls:
            count += 1
            node_id = f"{base}_{count}"
        self.counts[base] = count
        return node_id

    def call(self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Ref:
        binder = task._binder
        given = len(args)
        if kwargs or not binder.required <= given <= binder.most:
            binder.check(args, kwargs)
        deps: dict[str, None] = {}
        self.deps = deps
        refs: list[tuple[int, str | None, tuple[str | int, ...]]] = []
        getters: list[tuple[int | str, Callable[[NodeContext], Any]]] = []
        arg_list = list(args)
        calls = self.calls
        for index, value in enumerate(args):
            kind = type(value)
            if kind is Ref:  # the common case, inline: a whole output or an item of one
                node = value._node
                if node is not None:
                    if node not in calls:
                        self.depend(value)  # raises, naming the problem
                    deps[node] = None
                refs.append((index, node, value._path))
                arg_list[index] = None
            elif value is ITEM:  # a mapped call's item
                getters.append((index, item_of))
                arg_list[index] = None
            elif kind in CONTAINERS:
                get = compile_getter(value, self)
                if get is not None:
                    getters.append((index, get))
                    arg_list[index] = None
        if kwargs:
            for key, value in kwargs.items():
                get = compile_getter(value, self)
                if get is not None:
                    getters.append((key, get))
                    kwargs[key] = None
        base = task.id
        counts = self.counts
        count = counts.get(base)
        # node_id()'s common cases inline: a task's first call, and a next number not taken.
        if count is None:
            if base in calls:
                node_id = self.node_id(base)
            else:
                node_id = base
                counts[base] = 1
        else:
            count += 1
            node_id = f"{base}_{count}"
            if node_id in calls:
                node_id = self.node_id(base)
            else:
                counts[base] = count
        # A call without keywords or getters (the common case) shares one empty dict and
        # list, and one list of Nones for arguments that are all references (never changed:
        # Call copies before filling): a workflow keeps every call.
        if len(refs) == given:  # every positional argument a reference: all None
            arg_list = _NONES.setdefault(given, arg_list)
        call = Call(
            base, task.fn, arg_list, kwargs or _NO_KWARGS, tuple(refs), getters or _NO_GETTERS
        )
        # PythonExecutor(call, import_path=...) and a Node like the task's template, without
        # their argument checks (they ran on the template, and the id and deps are valid by
        # construction): a 10,000-call workflow is defined in half the time of calling them.
        # Ids are unique (node_id()), and recording adds nodes to a DAG nobody else has
        # touched yet: add_node's checks are for other callers.
        executor: PythonExecutor = _new(PythonExecutor)
        _SET_FN(executor, call)
        _SET_IMPORT_PATH(executor, self.import_path)
        fields = task.node_fields.copy()
        fields["id"] = node_id
        fields["deps"] = tuple(deps)
        fields["executor"] = executor
        made: Node = _new(Node)
        _SET_NODE_FIELDS(made, fields)
        self.nodes[node_id] = made
        calls[node_id] = call
        return Ref(node_id, ())

    def map(
        self, task: Task[..., Any], items: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Ref:
        """A mapped call of ``task``: its node fans out over ``items`` at run time."""
        expression, parent = _map_expression(items, task.id)
        if parent is not None and parent not in self.calls:
            self.depend(items)  # raises, naming the problem
        ref = self.call(task, (ITEM, *args), kwargs)
        node_id = ref.node_id
        assert node_id is not None
        node = self.nodes[node_id]
        deps = node.deps if parent is None or parent in node.deps else (*node.deps, parent)
        self.nodes[node_id] = dataclasses.replace(
            node, deps=deps, map=expression, **task.map_options
        )
        return ref


# The fan-out options of a task: a mapped call's node gets them (see Task.map).
_MAP_OPTIONS = ("max_parallel", "allow_partial", "max_items")


_LUA_NAME = re.compile(r"[A-Za-z_]\w*")


def _map_expression(items: Any, task_id: str) -> tuple[str, str | None]:
    """The Lua expression a mapped call's node fans out over, and the node it reads (``None``
    for an input or a constant): ``results.extract.rows`` for ``e["rows"]``,
    ``inputs.items`` for a parameter, a JSON literal for a constant list."""
    if type(items) is Ref:
        node = items.node_id
        if node is None:
            head, path = f"inputs.{items.path[0]}", items.path[1:]
        else:
            head, path = f"results.{node}", items.path
        parts = [head]
        for key in path:
            if isinstance(key, int):
                parts.append(f"[{key + 1}]")  # Lua lists count from 1
            elif _LUA_NAME.fullmatch(key):
                parts.append(f".{key}")
            else:
                parts.append(f"[{json.dumps(key, ensure_ascii=False)}]")
        return "".join(parts), node
    if isinstance(items, (list, tuple)):
        try:
            text = json.dumps(list(items), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"task {task_id}: map over a list that is not JSON data: {exc}"
            ) from None
        # A long bracket no `]=...` of the text can close early.
        level = "=" * (max((len(m) for m in re.findall(r"\](=*)", text)), default=-1) + 1)
        return f"json.decode([{level}[{text}]{level}])", None
    raise TypeError(
        f"task {task_id}: map takes a reference to a list (a task's output or an item of one, "
        f"or a workflow parameter) or a list, got {type(items).__name__}"
    )


# PythonExecutor's slots, and a Node's fields, set directly (their classes are frozen). A call's
# node takes a copy of its task's template node's fields (whatever options Node grows, the
# "rules" ones included) with its own id, deps and executor.
_SET_NODE_FIELDS = Node.__dict__["__dict__"].__set__
_SET_FN = PythonExecutor.__dict__["fn"].__set__
_SET_IMPORT_PATH = PythonExecutor.__dict__["import_path"].__set__
_new = object.__new__
_NO_KWARGS: dict[str, Any] = {}
_NO_GETTERS: list[tuple[int | str, Callable[[NodeContext], Any]]] = []
_NONES: dict[int, list[Any]] = {}


def _import_path(fn: Callable[..., Any]) -> tuple[str | None, str]:
    """The import path of a workflow's node callable, or ``None`` and why there is none."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or module == "__main__":
        return None, "is defined in __main__"
    if "<" in qualname:
        return None, "is defined inside a function"
    return f"{module}:{qualname}.call_node", ""


class DecoratedWorkflow(DAG):
    """A workflow made by :func:`workflow`: a :class:`DAG` (``numbers.run(...)``,
    ``to_spec()``, registration, engines) whose nodes are the task calls its function made.

    ``output`` is the :class:`Ref` the function returned (``None`` if it returned nothing);
    :meth:`output_of` reads its value from a run's result. ``inputs`` is the JSON Schema of
    its parameters (:func:`dagengine.inputs.schema_from_signature`): runs are validated
    against it and missing inputs take the parameters' defaults.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        id: str | None = None,
        version: str | None = None,
        *,
        description: str | None = None,
        max_parallel: int | None = None,
        fail_fast: bool = False,
        timeout: float | str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@workflow decorates a function, got {type(fn).__name__}")
        workflow_id = id if id is not None else getattr(fn, "__name__", None)
        if description is None and fn.__doc__:
            description = inspect.cleandoc(fn.__doc__).split("\n\n")[0]
        super().__init__(
            workflow_id,
            version,
            description=description,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            timeout=timeout,
            inputs=schema_from_signature(fn, owner=str(workflow_id)),
        )
        self.fn = fn
        self.__wrapped__ = fn
        self._import_path, self._no_path = _import_path(fn)
        self._calls: dict[str, Call] = {}
        self.output = self._record(fn)

    def _record(self, fn: Callable[..., Any]) -> Ref | None:
        positional: list[Ref] = []
        keywords: dict[str, Ref] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(
                    f"workflow {self.id}: parameter {param.name} is *args/**kwargs; a "
                    "workflow's parameters are its named inputs"
                )
            ref = Ref(None, (param.name,))
            if param.kind is param.POSITIONAL_ONLY:
                positional.append(ref)
            else:
                keywords[param.name] = ref
        recorder = _Recorder(self._nodes, self._import_path)
        outer = _current()
        _recording.recorder = recorder
        # Recording allocates a few objects per call and frees none: without a pause, the
        # collector's passes over them are about a third of a large workflow's definition.
        collecting = gc.isenabled()
        gc.disable()
        try:
            out = fn(*positional, **keywords)
        finally:
            _recording.recorder = outer
            if collecting:
                gc.enable()
        self._calls = recorder.calls
        self._ref = None  # nodes were added behind add_node's back: see _Recorder.call
        self._validated = False
        if not self._calls:
            raise SpecError(f"workflow {self.id}: its function called no task", path="nodes")
        if out is not None and type(out) is not Ref:
            raise TypeError(
                f"workflow {self.id}: the function returned {type(out).__name__}; return a "
                "task's reference (its output is the workflow's output) or nothing"
            )
        return out

    @property
    def dag(self) -> DAG:
        """The workflow as a :class:`DAG` (itself: a workflow is one)."""
        return self

    def call_node(self, ctx: NodeContext) -> Any:
        """Run the task call recorded as node ``ctx.node_id`` (what a spec's Python nodes of
        this workflow name, so an engine importing the workflow can run them); an item of a
        mapped node (``square[3]``) runs its node's call."""
        node_id = ctx.node_id if ctx.index is None else ctx.node_id.rpartition("[")[0]
        call = self._calls.get(node_id)
        if call is None:
            raise LookupError(
                f"workflow {self.id} has no task node {ctx.node_id!r} (was the module "
                "changed since the spec was written?)"
            )
        return call(ctx)

    def output_of(self, result: RunResult) -> Any:
        """The value of :attr:`output` in a finished run's ``result`` (``None`` without one);
        a ``LookupError`` if that node has no output (it did not succeed)."""
        ref = self.output
        if ref is None:
            return None
        node = ref.node_id
        assert node is not None
        outputs = result.outputs
        if node not in outputs:
            raise LookupError(f"workflow {self.id}: node {node!r} has no output in this run")
        return walk(outputs[node], ref.path, node)

    def to_spec(self) -> dict[str, Any]:
        """The workflow as a spec dict (see :meth:`DAG.to_spec`). Its task nodes name
        ``module:function.call_node``, so the workflow must be importable: defined at module
        level (not in ``__main__``), under the function's own name."""
        path = self._import_path
        if path is None:
            raise SpecError(
                f"workflow {self.id} {self._no_path}; only a module-level workflow can be "
                "written as a spec (and run by an engine)",
                path="nodes",
            )
        module_name, _, attr = path.rpartition(".")[0].partition(":")
        module = sys.modules.get(module_name)
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part, None)
        if target is not self:
            raise SpecError(
                f"workflow {self.id}: {module_name}:{attr} is not this workflow; assign the "
                "decorated workflow to its function's own name so an engine can import it",
                path="nodes",
            )
        return super().to_spec()

    def __repr__(self) -> str:
        version = f"@{self.version}" if self.version else ""
        return f"<DecoratedWorkflow {self.id}{version}: {len(self)} nodes>"


@overload
def workflow(fn: Callable[..., Any], /) -> DecoratedWorkflow: ...


@overload
def workflow(
    id: str | None = None,
    /,
    *,
    version: str | None = None,
    description: str | None = None,
    max_parallel: int | None = None,
    fail_fast: bool = False,
    timeout: float | str | None = None,
) -> Callable[[Callable[..., Any]], DecoratedWorkflow]: ...


def workflow(
    id: str | Callable[..., Any] | None = None,
    /,
    *,
    version: str | None = None,
    description: str | None = None,
    max_parallel: int | None = None,
    fail_fast: bool = False,
    timeout: float | str | None = None,
) -> DecoratedWorkflow | Callable[[Callable[..., Any]], DecoratedWorkflow]:
    """Make a function a :class:`DecoratedWorkflow`: ``@workflow("numbers", version="1.0.0")``, or
    bare ``@workflow`` (the id is the function's name).

    The function runs once, now, to record the graph (see the module docs); its parameters
    are the run's inputs. The other arguments are the :class:`DAG`'s.
    """

    def decorate(fn: Callable[..., Any]) -> DecoratedWorkflow:
        return DecoratedWorkflow(
            fn,
            id if isinstance(id, str) else None,
            version,
            description=description,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            timeout=timeout,
        )

    if callable(id):
        return decorate(id)
    if id is not None and not isinstance(id, str):
        raise TypeError(f"workflow id must be a str, got {type(id).__name__}")
    return decorate
