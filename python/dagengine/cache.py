"""Caching node outputs (a node's ``cache``; see :class:`~dagengine.Node`).

The run's driver (in the core) computes a cached node's key before its first attempt and
looks it up in the run's cache; a hit is not executed (the node succeeds with the stored
output, a ``node_cached`` event names the run that computed it), and a node that ran and
succeeded is stored under its key. The key is a SHA-256 of the node's code identity
(:func:`code_identity`) with either the run's inputs and the parents' outputs as canonical
JSON (the default) or the value of the node's key expression. So a change of code misses.

A local :meth:`DAG.run <dagengine.DAG.run>` uses one process-wide :class:`MemoryCache`
(:func:`default_cache`) unless it is given another ``cache`` (any object following
:class:`Cache`), or ``cache=None`` to run cached nodes as if they were not. The
orchestrator keeps its entries in its store.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from dagengine import _core
from dagengine.nodes import LuaExecutor, Node, NoopExecutor, PythonExecutor, SubWorkflow

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "Cache",
    "MemoryCache",
    "code_identity",
    "default_cache",
    "native_cache_options",
    "python_code_identity",
    "run_cache",
]

#: Entries the process-wide cache holds before it evicts the least recently used.
DEFAULT_MAX_ENTRIES = 10_000


@runtime_checkable
class Cache(Protocol):
    """Where a run looks cached nodes up and stores their outputs. Called on the run's
    driver thread (with the GIL): keep both calls quick. An exception in either is reported
    (``sys.unraisablehook``) and the run goes on: a failed lookup is a miss."""

    def get(self, node_id: str, key: str) -> tuple[dict[str, Any], str] | None:
        """The unexpired ``(output, run_id)`` stored for ``node_id`` under ``key``, or
        ``None``."""
        ...

    def put(
        self, node_id: str, key: str, output: dict[str, Any], run_id: str, ttl: float | None
    ) -> None:
        """Store ``output``, computed by run ``run_id``; usable for ``ttl`` seconds from now
        (``None``: until evicted)."""
        ...


class MemoryCache:
    """A bounded in-memory :class:`Cache`: at most ``max_entries`` entries, the least
    recently used evicted first; expired entries are misses (and dropped when seen).

    ``clock`` is what tells the time for expiry: an object with ``now()`` in seconds (a
    :class:`~dagengine.testing.VirtualClock`, so a test can step past a ttl at once);
    wall-clock time by default, and then the entries live in the core, which a run looks
    up without entering the interpreter (with a clock, each lookup and store of a run calls
    into Python). Thread-safe.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *, clock: Any = None) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
        if clock is not None and not callable(getattr(clock, "now", None)):
            raise TypeError(f"clock must have a now() method, got {type(clock).__name__}")
        self.max_entries = max_entries
        self._native = _core.MemoryCacheRef(max_entries) if clock is None else None
        self._now: Callable[[], float] = time.time if clock is None else clock.now
        self._entries: OrderedDict[tuple[str, str], tuple[dict[str, Any], str, float | None]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()

    def get(self, node_id: str, key: str) -> tuple[dict[str, Any], str] | None:
        """See :meth:`Cache.get`."""
        if self._native is not None:
            return self._native.get(node_id, key)
        with self._lock:
            entry = self._entries.get((node_id, key))
            if entry is None:
                return None
            output, run_id, expires = entry
            if expires is not None and self._now() >= expires:
                del self._entries[(node_id, key)]
                return None
            self._entries.move_to_end((node_id, key))
            return output, run_id

    def put(
        self, node_id: str, key: str, output: dict[str, Any], run_id: str, ttl: float | None
    ) -> None:
        """See :meth:`Cache.put`."""
        if self._native is not None:
            self._native.put(node_id, key, output, run_id, ttl)
            return
        expires = None if ttl is None else self._now() + ttl
        with self._lock:
            self._entries[(node_id, key)] = (output, run_id, expires)
            self._entries.move_to_end((node_id, key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        if self._native is not None:
            self._native.clear()
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        if self._native is not None:
            return len(self._native)
        with self._lock:
            return len(self._entries)


_DEFAULT: MemoryCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> MemoryCache:
    """The process-wide :class:`MemoryCache` local runs use unless told otherwise."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MemoryCache()
        return _DEFAULT


def _source(obj: Any) -> str:
    """``obj``'s source text, or its compiled code's bytes and constants when the source
    cannot be read (a function defined in a REPL)."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is None:
            return ""
        return f"{code.co_code.hex()} {code.co_consts!r}"


def code_identity(node: Node) -> str:
    """What stands for a node's code in its cache key: a Lua script's text, a Python
    function's (or executor class's) qualified name and source, a sub-workflow's id and
    version range. A change of any of them misses."""
    executor = node.executor
    if isinstance(executor, NoopExecutor):
        return "noop"
    if isinstance(executor, LuaExecutor):
        return f"lua\n{executor.code}"
    if isinstance(executor, SubWorkflow):
        return f"workflow\n{executor.workflow_id}@{executor.version_range}"
    if isinstance(executor, PythonExecutor):
        return python_code_identity(executor.fn, node.id)
    return _python_identity(type(executor), "")


def python_code_identity(fn: Any, node_id: str) -> str:
    """The code identity (see :func:`code_identity`) of Python node ``node_id`` calling
    ``fn``: what an engine computes on the function an import path resolves to there. A
    decorated workflow's ``call_node`` (which every node of its spec names) stands for the
    task call recorded as ``node_id``."""
    recorded = _recorded_call(fn, node_id)
    if recorded is not None:
        fn = recorded
    call = ""
    if hasattr(fn, "task_id") and hasattr(fn, "args"):
        # A task's recorded call (dagengine.authoring): its function, with the call's
        # constant arguments (references stand in by their paths).
        call = f"\n{fn.args!r} {sorted(fn.kwargs.items())!r}"
        fn = fn.fn
    fn = inspect.unwrap(fn)
    owner = getattr(fn, "__self__", None)
    if owner is not None and getattr(fn, "__name__", None) == "execute":
        fn = type(owner)  # a bound execute method stands for its class
    return _python_identity(fn, call)


def _python_identity(fn: Any, call: str) -> str:
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    return f"python\n{name}\n{_source(fn)}{call}{_bound(fn)}"


def _recorded_call(fn: Any, node_id: str) -> Any:
    """The task call a decorated workflow recorded as ``node_id``, when ``fn`` is that
    workflow's bound ``call_node``; else ``None``."""
    if getattr(fn, "__name__", None) != "call_node":
        return None
    nodes = getattr(getattr(fn, "__self__", None), "nodes", None)
    node = nodes.get(node_id) if isinstance(nodes, Mapping) else None
    executor = getattr(node, "executor", None)
    if isinstance(executor, PythonExecutor) and executor.fn is not fn:
        return executor.fn
    return None


def _bound(fn: Any) -> str:
    """What a function closes over and its defaults: two closures of one source (a
    wrapper made per node, a function made by a factory) are different code. Values whose
    ``repr`` names an address make every run miss, never a wrong hit."""
    parts = []
    cells = getattr(fn, "__closure__", None) or ()
    for cell in cells:
        try:
            parts.append(repr(cell.cell_contents))
        except ValueError:  # an empty cell
            parts.append("<empty>")
    defaults = getattr(fn, "__defaults__", None)
    if defaults:
        parts.append(repr(defaults))
    if not parts and not callable(getattr(fn, "__code__", None)) and hasattr(fn, "func"):
        parts.append(repr(fn))  # a functools.partial: its function and arguments
    return "".join(f"\n{part}" for part in parts)


def native_cache_options(node: Node) -> dict[str, Any]:
    """The core's ``add_node`` keyword arguments for a cached node (none for others)."""
    policy = node.cache
    if policy is None:
        return {}
    return {"cache": (policy.key, policy.ttl, code_identity(node))}


def run_cache(cache: Cache | bool | None) -> Any:
    """What the core is given as a local run's cache, for its ``cache`` argument: ``True``
    (the default) is :func:`default_cache`, ``None`` or ``False`` none (cached nodes just
    run), anything else must follow :class:`Cache`; a wall-clock :class:`MemoryCache` is
    handed over as the core's own."""
    if cache is True:
        cache = default_cache()
    if cache is None or cache is False:
        return None
    if isinstance(cache, MemoryCache) and cache._native is not None:
        return cache._native
    if not isinstance(cache, Cache):
        raise TypeError(
            f"cache must be a Cache (get and put), True or None, got {type(cache).__name__}"
        )
    return cache
