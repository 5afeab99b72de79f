"""The workflow: :class:`DAG`, running it locally, and :func:`bind` (a parsed spec to a DAG).

The parts of a DAG (:class:`Node`, the executors, :class:`NodeContext`) are in
:mod:`dagengine.nodes` and importable from here too; a spec's shape is checked by
:func:`dagengine.spec_model.parse`, which :func:`bind` takes on from.

This module is the only user of the native core for local runs (``dagengine._core``): a
:class:`DAG` keeps one ``_core.DagRef``, rebuilt lazily after nodes change, and a run is a
``_core.RunRef`` wrapped in :class:`LocalRun`. Python nodes run on the core's worker threads
through the trampoline :func:`make_invoke` returns (:mod:`dagengine._invoke`), which builds a
:class:`NodeContext` and calls the node.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

from dagengine import _core
from dagengine._invoke import POLL_SECONDS, make_invoke
from dagengine._run_args import check_completed, check_inputs
from dagengine._semver import Version
from dagengine.cache import Cache, native_cache_options, run_cache
from dagengine.exceptions import (
    DuplicateNodeError,
    LuaSyntaxError,
    SpecError,
)
from dagengine.inputs import check_schema, validate_inputs
from dagengine.node_logs import NodeLogQueue
from dagengine.nodes import (
    Executor,
    LuaExecutor,
    Node,
    NodeContext,
    NodeOutput,
    NoopExecutor,
    PythonExecutor,
    SubWorkflow,
    SubWorkflowRunner,
    check_positive_int,
    check_timeout,
    check_when_syntax,
    node_from_model,
    node_to_model,
)
from dagengine.results import NodeEvent, RunResult
from dagengine.spec_model import RetryBackoff, WorkflowSpecModel, parse, to_dict

#: Seconds the core drives a short run on its caller's thread before it goes on elsewhere: one
#: figure, the core's, for ``dag.run``, the engine service and the orchestrator's in-process
#: engine (``DAG.start(_inline_budget=)``).
INLINE_BUDGET: Final[float] = _core.INLINE_BUDGET

__all__ = [
    "DAG",
    "Executor",
    "LocalRun",
    "LuaExecutor",
    "Node",
    "NodeContext",
    "NodeOutput",
    "NoopExecutor",
    "PythonExecutor",
    "RetryBackoff",
    "SubWorkflow",
    "SubWorkflowRunner",
    "bind",
    "make_invoke",
    "workflow_model",
]


# --- the invoke trampoline --------------------------------------------------------------------


def _payload(executor: Any) -> Any:
    """The object the trampoline receives for a ``python`` node: a callable taking the context,
    or the :class:`SubWorkflow` itself (recognised by the trampoline)."""
    if isinstance(executor, PythonExecutor):
        return executor.fn
    if isinstance(executor, SubWorkflow):
        return executor
    return executor.execute


# --- runs -------------------------------------------------------------------------------------


class LocalRun:
    """A run started by :meth:`DAG.start`, executing in this process.

    Iterate :meth:`events` (or ``async for event in run``) to follow it, :meth:`wait` /
    :meth:`wait_async` for its :class:`~dagengine.RunResult`, :meth:`cancel` to stop it.
    Events are buffered by the core, so they are never lost, however late you read them;
    each event is delivered once, to whichever reader takes it first.
    """

    def __init__(self, ref: _core.RunRef, logs: NodeLogQueue | None = None) -> None:
        self._ref = ref
        self._logs = logs
        self._result: RunResult | None = None

    def _next(self, timeout: float, finished: bool) -> list[NodeEvent]:
        """The core's pending events, with Python nodes' captured lines merged in (and, once
        the run is over, the lines no end event claimed)."""
        batch = self._ref.next_events(timeout)
        if self._logs is not None:
            batch = self._logs.merge(batch)
            if finished and not batch:
                batch = self._logs.rest()
        return [NodeEvent.from_tuple(raw) for raw in batch]

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._ref.run_id

    @property
    def done(self) -> bool:
        """True once the run has finished."""
        return self._ref.done()

    def cancel(self) -> None:
        """Ask the run to stop: pending nodes are cancelled, running ones see
        ``ctx.cancelled`` (Lua is interrupted). Returns at once; :meth:`wait` for the end."""
        self._ref.cancel()

    def poll_events(self, timeout: float = 0.0) -> list[NodeEvent]:
        """Wait up to ``timeout`` seconds for events and return every pending one."""
        return self._next(timeout, self._ref.done())

    def events(self) -> Iterator[NodeEvent]:
        """Yield events as they happen until the run has finished and every event is out."""
        for batch in self.event_batches():
            yield from batch

    def event_batches(self) -> Iterator[list[NodeEvent]]:
        """:meth:`events`, a list at a time: every event out by then (never an empty one)."""
        while True:
            # Read done() before draining: events are queued before the run is marked done,
            # so an empty batch after a true done() means nothing more can come.
            finished = self._ref.done()
            events = self._next(0.0 if finished else POLL_SECONDS, finished)
            if events:
                yield events
            if finished and not events:
                return

    async def _aevents(self) -> AsyncIterator[NodeEvent]:
        loop = asyncio.get_running_loop()
        while True:
            finished = self._ref.done()
            if finished:
                events = self._next(0.0, True)
            else:
                # The wait releases the GIL in the core; run it off the loop so the loop (and
                # any async nodes of this run scheduled on it) keeps going.
                events = await loop.run_in_executor(None, self._next, 0.1, False)
            for event in events:
                yield event
            if finished and not events:
                return

    def __aiter__(self) -> AsyncIterator[NodeEvent]:
        return self._aevents()

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run finishes and return its result.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first (the run keeps going). On
        Ctrl-C the run is cancelled, waited for, and ``KeyboardInterrupt`` re-raised.
        """
        if self._result is not None:
            return self._result
        deadline = None if timeout is None else _now() + timeout
        try:
            while True:
                slice_ = POLL_SECONDS
                if deadline is not None:
                    slice_ = min(slice_, max(deadline - _now(), 0.0))
                if self._ref.wait(slice_):
                    break
                if deadline is not None and _now() >= deadline:
                    raise TimeoutError(f"run {self.run_id} still running after {timeout}s")
        except KeyboardInterrupt:
            self._cancel_and_wait()
            raise
        return self.result()

    async def wait_async(self) -> RunResult:
        """Await the run's end and return its result; cancelling the awaiting task cancels the
        run (and waits for it to stop)."""
        loop = asyncio.get_running_loop()
        try:
            while not await loop.run_in_executor(None, self._ref.wait, 0.1):
                pass
        except asyncio.CancelledError:
            self._ref.cancel()
            # Wait off the loop: async nodes of this run may need the loop to wind down.
            while not await asyncio.shield(loop.run_in_executor(None, self._ref.wait, 0.1)):
                pass
            raise
        return self.result()

    def result(self) -> RunResult:
        """The result of the finished run (``RuntimeError`` if it is still running)."""
        if self._result is None:
            self._result = RunResult.from_dict(self._ref.result())
        return self._result

    def _cancel_and_wait(self) -> None:
        self._ref.cancel()
        while not self._ref.wait(POLL_SECONDS):
            pass

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<LocalRun {self.run_id} {state}>"


def _now() -> float:
    return time.monotonic()


# --- the DAG ----------------------------------------------------------------------------------


class DAG:
    """A workflow: nodes and their dependencies, plus run defaults.

    ``id`` and ``version`` (semver) name the workflow when it is registered or written as a
    spec; ``max_parallel`` bounds concurrently running nodes, ``fail_fast`` cancels the rest of
    a run at the first failure, ``timeout`` (seconds or ``"10m"``) bounds a whole run. Every run
    setting can be overridden per run. ``inputs`` is a JSON Schema of the run's inputs (see
    :mod:`dagengine.inputs`): every run's inputs are validated against it, defaults filled in.
    """

    def __init__(
        self,
        id: str | None = None,
        version: str | None = None,
        *,
        description: str | None = None,
        max_parallel: int | None = None,
        fail_fast: bool = False,
        timeout: float | str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        if id is not None and not isinstance(id, str):
            raise TypeError(f"DAG id must be a str, got {type(id).__name__}")
        if version is not None:
            if not isinstance(version, str):
                raise TypeError(f"DAG version must be a str, got {type(version).__name__}")
            try:
                Version.parse(version)
            except ValueError as exc:
                raise SpecError(str(exc), path="version") from None
        if description is not None and not isinstance(description, str):
            raise TypeError(f"DAG description must be a str, got {type(description).__name__}")
        if not isinstance(fail_fast, bool):
            raise TypeError(f"fail_fast must be a bool, got {type(fail_fast).__name__}")
        self.id = id
        self.version = version
        self.description = description
        self.max_parallel = check_positive_int(max_parallel, "max_parallel")
        self.fail_fast = fail_fast
        self.timeout = check_timeout(timeout, "timeout")
        #: The JSON Schema of the run's inputs, or ``None`` (inputs are not checked).
        self.inputs = check_schema(inputs) if inputs is not None else None
        self._nodes: dict[str, Node] = {}
        self._ref: _core.DagRef | None = None
        self._validated = False
        # The native graph is shared by every run of this DAG; building, validating and
        # starting it are serialised, so runs may be started from many threads at once.
        self._native_lock = threading.RLock()

    # -- building --

    @property
    def nodes(self) -> Mapping[str, Node]:
        """The nodes by id, in insertion order (read-only view)."""
        return MappingProxyType(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    @property
    def edge_count(self) -> int:
        """Number of dependency edges."""
        return sum(len(node.deps) for node in self._nodes.values())

    def add_node(self, node: Node) -> Node:
        """Add ``node`` and return it. A repeated id raises :class:`DuplicateNodeError` at once;
        a Lua syntax error raises :class:`LuaSyntaxError` at once; dependency problems are
        reported by :meth:`preprocess` (so nodes may be added in any order)."""
        if not isinstance(node, Node):
            raise TypeError(f"add_node expects a Node, got {type(node).__name__}")
        if node.id in self._nodes:
            raise DuplicateNodeError(f"duplicate node id {node.id!r}", node_id=node.id)
        if isinstance(node.executor, LuaExecutor):
            _lua_check(node.id, node.executor.code)
        if isinstance(node.when, str):
            check_when_syntax(node.id, node.when)
        if node.map is not None:
            check_when_syntax(node.id, node.map, "map")
        self._nodes[node.id] = node
        self._ref = None
        self._validated = False
        return node

    def add_nodes(self, nodes: Iterable[Node]) -> list[Node]:
        """Add several nodes (see :meth:`add_node`); returns them as a list."""
        return [self.add_node(node) for node in nodes]

    def task(
        self,
        fn: Callable[[NodeContext], Any] | None = None,
        /,
        *,
        id: str | None = None,
        deps: Iterable[str] = (),
        retries: int = 0,
        retry_backoff: RetryBackoff | None = None,
        timeout: float | str | None = None,
        map: str | None = None,
        max_parallel: int | None = None,
        allow_partial: bool = False,
        max_items: int | None = None,
        cache: bool | Mapping[str, Any] | None = None,
    ) -> Any:
        """Decorator adding a Python node that runs the function with the node's context:
        ``@dag.task(deps=["extract"])`` over ``def transform(ctx): ...`` (or bare
        ``@dag.task``). The id is the function's name unless ``id`` is given; the other
        arguments are :class:`Node`'s (``map="results.extract.rows"`` runs the function once
        per item, ``ctx.item``). Returns the function unchanged."""

        def add(function: Callable[[NodeContext], Any]) -> Callable[[NodeContext], Any]:
            node_id = id if id is not None else getattr(function, "__name__", None)
            if not isinstance(node_id, str):
                raise TypeError(f"dag.task: pass id=...; {function!r} has no __name__")
            executor = PythonExecutor(function)
            node = Node(
                node_id,
                deps,
                executor,
                retries=retries,
                retry_backoff=retry_backoff,
                timeout=timeout,
                map=map,
                max_parallel=max_parallel,
                allow_partial=allow_partial,
                max_items=max_items,
                cache=cache,
            )
            self.add_node(node)
            return function

        return add if fn is None else add(fn)

    def lua(
        self,
        id: str,
        code: str,
        deps: Iterable[str] = (),
        *,
        retries: int = 0,
        retry_backoff: RetryBackoff | None = None,
        timeout: float | str | None = None,
        max_instructions: int | None = None,
        max_memory: int | None = None,
        map: str | None = None,
        max_parallel: int | None = None,
        allow_partial: bool = False,
        max_items: int | None = None,
        cache: bool | Mapping[str, Any] | None = None,
    ) -> Node:
        """Add a Lua node and return it: ``dag.lua("double", "return {v = 2 * inputs.v}")``
        (short for ``add_node(Node(id, deps, LuaExecutor(code, ...), ...))``; with ``map``,
        the script runs once per item, ``item`` and ``index``)."""
        executor = LuaExecutor(code, max_instructions=max_instructions, max_memory=max_memory)
        node = Node(
            id,
            deps,
            executor,
            retries=retries,
            retry_backoff=retry_backoff,
            timeout=timeout,
            map=map,
            max_parallel=max_parallel,
            allow_partial=allow_partial,
            max_items=max_items,
            cache=cache,
        )
        return self.add_node(node)

    def _native(self) -> _core.DagRef:
        """The native graph, rebuilt after nodes changed."""
        with self._native_lock:
            if self._ref is None:
                ref = _core.DagRef()
                for node in self._nodes.values():
                    _add_native(ref, node)
                self._ref = ref
                self._validated = False
            return self._ref

    # -- validation and structure --

    def preprocess(self) -> DAG:
        """Validate the graph (unknown dependencies, self-dependencies, cycles — the error
        names the problem; a :class:`CycleError` carries the cycle path) and compute its order.
        Returns ``self``. Runs do this automatically; call it to fail early."""
        with self._native_lock:
            if not self._validated:
                self._native().preprocess()
                self._validated = True
        return self

    def topological_order(self) -> list[str]:
        """Node ids, every node after all of its parents."""
        return self.preprocess()._native().topological_order()

    def levels(self) -> list[list[str]]:
        """Node ids grouped by depth: level 0 are the roots, level n depends on level n-1."""
        return self.preprocess()._native().levels()

    def roots(self) -> list[str]:
        """Nodes without dependencies."""
        return self.preprocess()._native().roots()

    def leaves(self) -> list[str]:
        """Nodes no other node depends on."""
        return self.preprocess()._native().leaves()

    # -- running --

    def start(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
        timeout: float | str | None = None,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        subworkflow_runner: SubWorkflowRunner | None = None,
        events: bool = True,
        event_outputs: bool = False,
        cache: Cache | bool | None = True,
        _loop: asyncio.AbstractEventLoop | None = None,
        _here: bool = False,
        _inline_budget: float | None = None,
    ) -> LocalRun:
        """Start a run in the background and return its :class:`LocalRun` handle at once.

        ``inputs`` are the run's inputs (a mapping with str keys); ``completed`` maps ids of
        nodes already done to their outputs (they are not run again — used to resume).
        ``events=False`` skips recording events (slightly cheaper when nobody reads them);
        ``event_outputs=True`` puts each node's output in its ``node_succeeded`` event (as
        ``event.detail["output"]``), for callers that persist outputs as they come.
        ``async def`` nodes run with ``asyncio.run`` on the worker thread. ``cache`` is
        where cached nodes are looked up (see :mod:`dagengine.cache`; ``None``: nowhere).
        """
        native_inputs = check_inputs(inputs)
        if self.inputs is not None:
            native_inputs = validate_inputs(self.inputs, native_inputs)
        if run_id is None:
            run_id = uuid.uuid4().hex
        elif not isinstance(run_id, str) or not run_id:
            raise TypeError("run_id must be a non-empty str")
        if completed is not None:
            completed = check_completed(completed, self._nodes)
        self.preprocess()
        # Captured node output only matters to someone reading the events.
        logs = NodeLogQueue() if events else None
        invoke = make_invoke(_loop, subworkflow_runner, logs)
        max_parallel = check_positive_int(max_parallel, "max_parallel") or self.max_parallel
        run_timeout = self.timeout if timeout is None else check_timeout(timeout, "timeout")
        # ``_inline_budget`` (seconds): driven on this thread, without the GIL, until it ends
        # or the budget is spent, then on the core's threads (for runs of Lua and no-op
        # nodes: see ``orchestrator.backends.LocalBackend.launch``).
        extra = {} if _inline_budget is None else {"inline_budget": _inline_budget}
        with self._native_lock:
            native = self._native()
            # ``_here``: driven to its end on this thread, below (see ``DAG.run``).
            ref = (native.prepare_run if _here else native.start)(
                native_inputs,
                run_id,
                invoke,
                max_parallel=max_parallel,
                fail_fast=self.fail_fast if fail_fast is None else bool(fail_fast),
                timeout=run_timeout,
                completed=completed,
                events=events,
                event_outputs=event_outputs,
                cache=run_cache(cache),
                **extra,
            )
        if isinstance(ref, _core.PendingRun):
            ref = ref.run()
        return LocalRun(ref, logs)

    def run(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
        timeout: float | str | None = None,
        on_event: Callable[[NodeEvent], object] | None = None,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        subworkflow_runner: SubWorkflowRunner | None = None,
        cache: Cache | bool | None = True,
    ) -> RunResult:
        """Run the workflow to the end and return its :class:`~dagengine.RunResult`.

        A failing node does not raise: look at ``result.status`` or call
        ``result.raise_for_status()``. ``on_event`` is called on this thread with every
        :class:`~dagengine.NodeEvent` while the run goes on. Validation errors raise before
        anything runs. On Ctrl-C the run is cancelled, waited for, and the interrupt re-raised.

        Without ``on_event`` the run is driven on this thread, which calls synchronous Python
        nodes itself, one after the other, as long as each returns quickly; nodes that are
        ``async``, have a timeout (or the run has one), and nodes left waiting while another
        blocks run on the core's threads, so branches still run concurrently.
        """
        handle = self.start(
            inputs,
            run_id=run_id,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            timeout=timeout,
            completed=completed,
            subworkflow_runner=subworkflow_runner,
            cache=cache,
            events=on_event is not None,
            _here=on_event is None,
        )
        if on_event is None:
            return handle.wait()
        try:
            for event in handle.events():
                on_event(event)
        except BaseException:
            # A failing callback or Ctrl-C must not leave the run going on in the background.
            handle._cancel_and_wait()
            raise
        return handle.wait()

    async def run_async(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
        timeout: float | str | None = None,
        on_event: Callable[[NodeEvent], object] | None = None,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        subworkflow_runner: SubWorkflowRunner | None = None,
        cache: Cache | bool | None = True,
    ) -> RunResult:
        """Like :meth:`run`, awaitable. ``async def`` nodes run on the caller's event loop;
        cancelling the awaiting task cancels the run."""
        loop = asyncio.get_running_loop()
        handle = self.start(
            inputs,
            run_id=run_id,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            timeout=timeout,
            completed=completed,
            subworkflow_runner=subworkflow_runner,
            cache=cache,
            events=on_event is not None,
            _loop=loop,
        )
        if on_event is not None:
            try:
                async for event in handle:
                    on_event(event)
            except BaseException:
                handle.cancel()
                await asyncio.shield(handle.wait_async())
                raise
        return await handle.wait_async()

    def start_async(
        self,
        inputs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> LocalRun:
        """Like :meth:`start`, for code running in an event loop: ``async def`` nodes run on
        the running loop. Follow it with ``async for event in run`` and
        ``await run.wait_async()``."""
        return self.start(inputs, _loop=asyncio.get_running_loop(), **options)

    # -- specs --

    def to_spec(self) -> dict[str, Any]:
        """The workflow as a spec dict in canonical form (see :mod:`dagengine.spec`).

        Raises :class:`SpecError` for what a spec cannot express (a Python node whose function
        has no import path, such as a lambda or closure: those only work in-process).
        """
        return to_dict(workflow_model(self))

    @classmethod
    def from_spec(cls, data: Mapping[str, Any]) -> DAG:
        """Build (and validate) a DAG from a spec dict; see :func:`dagengine.parse_workflow`."""
        return bind(parse(data))

    def __repr__(self) -> str:
        name = self.id or "<anonymous>"
        version = f"@{self.version}" if self.version else ""
        return f"<DAG {name}{version}: {len(self._nodes)} nodes>"


# --- specs: model -> DAG and back ------------------------------------------------------------


def bind(model: WorkflowSpecModel, *, source: str | None = None) -> DAG:
    """The runnable DAG of a parsed spec: ``python:`` import paths are imported, Lua is
    compiled and the graph validated (unknown dependencies, cycles), so it is ready to run.
    ``source`` (a file name) prefixes the duplicate-node message, like :func:`parse`'s."""
    dag = DAG(
        model.id,
        model.version,
        description=model.description,
        max_parallel=model.max_parallel,
        fail_fast=model.fail_fast,
        timeout=model.timeout,
        inputs=model.inputs,
    )
    seen: dict[str, int] = {}
    for index, node in enumerate(model.nodes):
        if node.id in seen:
            prefix = f"{source}: " if source else ""
            raise DuplicateNodeError(
                f"{prefix}nodes[{index}].id: duplicate node id {node.id!r} "
                f"(also nodes[{seen[node.id]}])",
                node_id=node.id,
            )
        seen[node.id] = index
        dag.add_node(node_from_model(node))
    return dag.preprocess()


def workflow_model(dag: DAG) -> WorkflowSpecModel:
    """``dag`` as a parsed spec: a :class:`SpecError` for what a spec cannot express (no id,
    no nodes, a Python node without an import path)."""
    if dag.id is None:
        raise SpecError("a DAG needs an id to be written as a spec: DAG('my-workflow')", path="id")
    if not dag.nodes:
        raise SpecError(f"DAG {dag.id!r} has no nodes", path="nodes")
    return WorkflowSpecModel(
        id=dag.id,
        nodes=tuple(
            node_to_model(node, f"nodes[{i}]") for i, node in enumerate(dag.nodes.values())
        ),
        version=dag.version,
        description=dag.description,
        max_parallel=dag.max_parallel,
        fail_fast=dag.fail_fast,
        timeout=dag.timeout,
        inputs=dag.inputs,
    )


def _lua_check(node_id: str, code: str) -> None:
    try:
        _core.lua_check(code, node_id)
    except LuaSyntaxError as exc:
        # One message shape whatever the core says: which node, that it is Lua, the line.
        detail = exc.message.removeprefix(f"node {node_id!r}: ")
        if not detail.lower().startswith("lua"):
            detail = f"Lua {detail}" if detail.startswith("syntax error") else f"Lua: {detail}"
        raise LuaSyntaxError(
            f"node {node_id!r}: {detail}", line=exc.line, node_id=node_id
        ) from None


def _add_native(ref: _core.DagRef, node: Node) -> None:
    executor = node.executor
    common: dict[str, Any] = {
        "retries": node.retries,
        "backoff_initial": node.retry_backoff.initial,
        "backoff_factor": node.retry_backoff.factor,
        "backoff_max": node.retry_backoff.max,
        "timeout": node.timeout,
    }
    if node.trigger_rule != "all_success":
        common["trigger_rule"] = node.trigger_rule
    if isinstance(node.when, str):
        common["when"] = node.when
    elif node.when is not None:
        # The trampoline calls it and checks it returned a bool (see dagengine._invoke).
        common["when"] = node.when
    if node.map is not None:
        common["map"] = node.map
        common["map_max_parallel"] = node.max_parallel
        common["allow_partial"] = node.allow_partial
        common["max_items"] = node.max_items
    common.update(native_cache_options(node))
    if isinstance(executor, NoopExecutor):
        ref.add_node(node.id, node.deps, "noop", None, **common)
    elif isinstance(executor, LuaExecutor):
        ref.add_node(
            node.id,
            node.deps,
            "lua",
            executor.code,
            lua_max_instructions=executor.max_instructions,
            lua_max_memory=executor.max_memory,
            **common,
        )
    else:
        ref.add_node(node.id, node.deps, "python", _payload(executor), **common)
