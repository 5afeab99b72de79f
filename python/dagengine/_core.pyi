"""Type stubs for the native module ``dagengine._core`` (built from rust/dagengine-py).

This is the private bridge: only ``dagengine.workflow`` and the ``dagengine.engine`` package
(its ``process`` and ``session`` modules) use it; ``dagengine`` takes ``__version__`` from it.
Errors raised here are instances of the classes in ``dagengine.exceptions`` (the Rust side
imports that module and maps each Rust error variant to its own class).
"""

from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, final

__all__ = [
    "INLINE_BUDGET",
    "CancelToken",
    "DagRef",
    "EngineServerRef",
    "EngineSession",
    "MemoryCacheRef",
    "NodeContext",
    "NodeRecords",
    "Outputs",
    "ParentOutputs",
    "PendingRun",
    "RunRef",
    "__version__",
    "calls_in_flight",
    "lua_check",
]

__version__: str
#: Seconds the core drives a short run on its caller's thread before it goes on elsewhere
#: (``PendingRun.run`` and the engine service use it; ``DagRef.start(inline_budget=)`` is
#: given it by the orchestrator's in-process engine).
INLINE_BUDGET: float

#: Signature of the Python trampoline the core calls for every ``python`` node:
#: ``invoke(fn, node_id, run_id, attempt, inputs, results, cancel) -> dict | None``
#: (``results``: the parents' outputs, a :class:`ParentOutputs`); for an
#: item of a mapped node (``node_id`` like ``square[3]``) with an eighth argument, the item's
#: ``(index, item)``. For a node's Python ``when``, the condition's callable comes ninth (the
#: eighth ``None``): the trampoline calls it on the node's context and returns ``False`` when
#: it is false; then, with ``fn`` ``None`` it returns ``True`` (a non-bool, or the condition's
#: exception, is raised), else it calls ``fn`` on the same context (the condition's exception
#: is returned, not raised). It runs with the GIL held, on a core worker thread or
#: (``DAG.run``) on the thread driving the run; an exception fails the node.
Invoke: TypeAlias = Callable[
    [Any, str, str, int, Mapping[str, Any], ParentOutputs, CancelToken], Any
]

@final
class ParentOutputs:
    """A node's parents' outputs as the core hands them to the trampoline; ``NodeContext.results``
    converts them with :meth:`dict` when the node first reads it."""

    def dict(self) -> dict[str, Any]:
        """Each parent's id and output, converted: a new dict on every call."""
    def __len__(self) -> int: ...

@final
class NodeContext:
    """What a Python node receives: ``fn(ctx)`` (``dagengine.NodeContext``).

    ``inputs`` are the run's inputs (read-only), ``results`` maps each parent's id to that
    parent's output, ``node_id``/``run_id``/``attempt`` (1 for the first try) identify the
    call, and :attr:`cancelled` turns true when the run is cancelled or the node times out,
    so long-running code can stop early. In an item of a mapped node (``node_id`` like
    ``square[3]``), ``item`` is the item and ``index`` its position (from 0); elsewhere both
    are ``None``.
    """

    inputs: Mapping[str, Any]
    node_id: str
    run_id: str
    attempt: int
    index: int | None
    item: Any
    def __new__(
        cls,
        inputs: Mapping[str, Any],
        results: dict[str, Any] | ParentOutputs,
        node_id: str,
        run_id: str,
        attempt: int,
        cancel: CancelToken | None = None,
        item: tuple[int, Any] | None = None,
    ) -> NodeContext: ...
    @property
    def results(self) -> dict[str, Any]:
        """Each parent's id and its output: a dict of this call's own (changing it, or an
        output in it, changes nothing another node sees), converted when first read."""
    @results.setter
    def results(self, value: dict[str, Any]) -> None: ...
    @property
    def cancelled(self) -> bool:
        """True once the run is cancelled or this attempt timed out (read live)."""

@final
class CancelToken:
    """Live cancellation flag of one node attempt (``ctx.cancelled`` reads it), and where the
    attempt's log lines go while it runs."""

    @property
    def is_set(self) -> bool: ...
    @property
    def trace_context(self) -> Mapping[str, str] | None:
        """The W3C trace context (``traceparent``, ``tracestate``) the run came with,
        read-only; ``None`` when it came without one."""
    def send_logs(self, lines: list[tuple[str, str]]) -> bool:
        """Send ``(level, message)`` lines of this attempt to its run now, as ``NODE_LOG``
        events (before the attempt's end); false once the run has ended."""

@final
class DagRef:
    """A graph under construction or validated; nodes are addressed by string id."""

    def __init__(self) -> None: ...
    def add_node(
        self,
        node_id: str,
        deps: Sequence[str],
        kind: str,
        payload: Any = None,
        *,
        retries: int = 0,
        backoff_initial: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
        lua_max_instructions: int | None = None,
        lua_max_memory: int | None = None,
        trigger_rule: str | None = None,
        when: Any = None,
        map: str | None = None,
        map_max_parallel: int | None = None,
        allow_partial: bool = False,
        max_items: int | None = None,
        cache: tuple[str | None, float | None, str | None] | None = None,
    ) -> None:
        """Add one node. ``kind`` is ``"noop"``, ``"lua"`` (payload: source str) or
        ``"python"`` (payload: any object handed back to ``invoke``).

        ``trigger_rule`` is a rule's name (``None``: ``all_success``; an unknown name raises
        ``ValueError`` listing the valid ones). ``when`` is a Lua boolean expression (str) or
        an object handed to ``invoke`` before the first attempt, which must return
        ``{"when": bool}``; false skips the node. ``map`` (a Lua expression giving a list)
        fans the node out into one item per element, at most ``map_max_parallel`` running at
        once and at most ``max_items`` of them (default 100,000); ``allow_partial`` keeps a
        failed item from failing the node (its output is ``None``). ``cache`` (``(key,
        ttl, code)``) caches the node (see ``dagengine.cache``): under a hash of ``code`` (its
        code identity; a Lua node's default is its source) and either the run's inputs and
        parents' outputs or the value of the Lua expression ``key``; entries live ``ttl``
        seconds (``None``: until evicted).

        Raises ``DuplicateNodeError`` at once for a repeated id; dependency errors are
        reported by :meth:`preprocess`. A Lua syntax error (of the script or of ``when``)
        raises ``LuaSyntaxError``.
        """

    def add_nodes_csr(self, ids: list[str], offsets: Sequence[int], parents: Sequence[int]) -> None:
        """Bulk-add no-op nodes: node ``i``'s parents are ``parents[offsets[i]:offsets[i+1]]``
        (indices into ``ids``, counted from the first node of this call);
        ``len(offsets) == len(ids) + 1``. ``array('I')`` arguments are copied in bulk."""

    def preprocess(self) -> None:
        """Validate (duplicate ids, self-dependency, unknown dependency, cycle) and compute the
        topological order. Raises a ``ValidationError`` subclass naming the problem."""

    def __len__(self) -> int: ...
    @property
    def edge_count(self) -> int: ...
    def node_ids(self) -> list[str]: ...
    def topological_order(self) -> list[str]: ...
    def topological_order_indices(self) -> array[int]:
        """The order as node indices (insertion order) in a compact ``array('I')``."""

    def levels(self) -> list[list[str]]: ...
    def roots(self) -> list[str]: ...
    def leaves(self) -> list[str]: ...
    def start(
        self,
        inputs: Mapping[str, Any],
        run_id: str,
        invoke: Invoke,
        *,
        max_parallel: int | None = None,
        fail_fast: bool = False,
        timeout: float | None = None,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        events: bool = True,
        event_outputs: bool = False,
        cache: Any = None,
        inline_budget: float | None = None,
    ) -> RunRef:
        """Start a run on the core's runtime and return at once (preprocesses if needed).
        ``completed`` holds outputs of nodes already done (a resumed run skips them);
        ``event_outputs`` puts each node's output in its ``node_succeeded`` event detail;
        ``cache`` (an object with ``get(node_id, key)`` and ``put(node_id, key, output,
        run_id, ttl)``) is where cached nodes are looked up and stored. ``inline_budget``
        (seconds): drive the run on this thread, keeping the GIL, until it ends, the budget
        is spent or it would have to wait for other threads, and only then go on on the
        runtime: a short run of Lua and no-op nodes has ended when this returns, with no
        thread hand-off (a Lua node still running when the budget runs out is interrupted and
        runs again on the pool, which nothing can tell: scripts have no side effects). For
        graphs whose nodes need no Python (Lua, no-op, Lua ``when``, no cache object): the
        GIL is not let go meanwhile."""

    def prepare_run(
        self,
        inputs: Mapping[str, Any],
        run_id: str,
        invoke: Invoke,
        *,
        max_parallel: int | None = None,
        fail_fast: bool = False,
        timeout: float | None = None,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        events: bool = True,
        event_outputs: bool = False,
        cache: Any = None,
    ) -> PendingRun:
        """Like :meth:`start`, but the run starts only with :meth:`PendingRun.run`, on the
        caller's thread; nothing of this graph stays borrowed meanwhile."""

@final
class PendingRun:
    """A run prepared by :meth:`DagRef.prepare_run`, not started."""

    def run(self) -> RunRef:
        """Drive the run to its end on this thread, which keeps the GIL while it calls
        synchronous Python nodes itself and releases it while it waits for other threads or
        runs Lua; returns the finished run. On Ctrl-C (or a ``KeyboardInterrupt`` out of a
        node called here) the run is cancelled, driven to its end, and the interrupt raised.
        A run without Python nodes is started inline, as by :meth:`DagRef.start` with an
        ``inline_budget`` of 100 µs (driven here, the GIL held: a short run has ended when
        this returns), then goes on on a driver thread (its Lua and no-op nodes need no GIL):
        wait on the returned handle. A second call raises ``RuntimeError``."""

@final
class MemoryCacheRef:
    """The core's bounded in-memory cache of node outputs (least recently used evicted
    first, wall-clock expiry): a run given it as ``cache`` looks up without Python."""

    def __new__(cls, max_entries: int) -> MemoryCacheRef: ...
    def get(self, node_id: str, key: str) -> tuple[dict[str, Any], str] | None:
        """The unexpired ``(output, run_id)`` of ``node_id`` under ``key``, or ``None``."""

    def put(
        self,
        node_id: str,
        key: str,
        output: dict[str, Any],
        run_id: str,
        ttl: float | None = None,
    ) -> None:
        """Store ``output`` of run ``run_id`` for ``node_id`` under ``key`` for ``ttl``
        seconds (``None``: until evicted)."""

    def clear(self) -> None:
        """Drop every entry."""

    def __len__(self) -> int: ...

@final
class RunRef:
    """A running (or finished) run. Waiting methods release the GIL."""

    @property
    def run_id(self) -> str: ...
    def done(self) -> bool: ...
    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the run has finished."""

    def next_events(self, timeout: float) -> list[tuple[int, str, str | None, int, float, Any]]:
        """Wait up to ``timeout`` seconds for events; return every pending event as
        ``(seq, kind, node_id, attempt, unix_time, detail)``. An empty list means none came in
        time (check :meth:`done`). ``kind`` is one of ``run_started``, ``node_started``,
        ``node_succeeded``, ``node_failed``, ``node_retrying``, ``node_skipped``,
        ``node_cancelled``, ``node_log``, ``run_finished``; ``detail`` is ``None`` or a dict
        (``error`` for failures, ``delay`` for retries, ``message`` for logs, ``status`` for
        ``run_finished``)."""

    def cancel(self) -> None: ...
    def result(self) -> dict[str, Any]:
        """The finished run as a dict: ``run_id``, ``status`` (``succeeded`` | ``failed`` |
        ``cancelled``), ``error`` (``None`` or ``{"type", "message", "node_id"}``),
        ``duration`` (seconds), ``outputs`` (an :class:`Outputs` mapping of the succeeded
        nodes) and ``nodes`` (a :class:`NodeRecords` mapping of every node). Raises
        ``RuntimeError`` if the run has not finished."""

@final
class Outputs:
    """Read-only mapping of each succeeded node's id to its output, converted on access."""

    def __len__(self) -> int: ...
    def __getitem__(self, key: str, /) -> dict[str, Any]: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...

@final
class NodeRecords:
    """Read-only mapping of node id to ``{"status", "output", "error", "attempts",
    "started_at", "finished_at"}`` (``error``: ``None`` or ``{"type", "message",
    "traceback"}``), each built on access."""

    def __len__(self) -> int: ...
    def __getitem__(self, key: str, /) -> dict[str, Any]: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...
    def items(self) -> list[tuple[str, dict[str, Any]]]: ...

def lua_check(source: str, chunk_name: str | None = None) -> None:
    """Compile ``source`` in text mode; raise ``LuaSyntaxError`` (with ``line``) if invalid."""

def calls_in_flight() -> int:
    """How many calls into ``invoke`` trampolines are in progress, on any thread."""

#: Resolves a host node reference for the engine server: ``resolve(kind, reference)`` with
#: ``kind`` ``"python"`` (reference ``"pkg.module:function"``; return the callable) or
#: ``"workflow"`` (reference ``"child@range"``; return the payload the ``invoke`` trampoline
#: understands, a ``SubWorkflow``). Raise ``ImportPathError`` (or any exception) to refuse:
#: the request then fails with ``INVALID_ARGUMENT`` naming the node and the reference.
Resolve: TypeAlias = Callable[[str, str], Any]

class NodeLogStore(Protocol):
    """Where an engine's trampoline leaves Python nodes' captured lines: the core takes an
    attempt's ``(level, message)`` pairs once the attempt returned, to send them as
    ``NODE_LOG`` events before its end."""

    def take(self, run_id: str, node_id: str, attempt: int) -> list[tuple[str, str]]: ...

@final
class EngineServerRef:
    """The engine's gRPC server (``dagengine.v1.EngineService`` + ``grpc.health.v1``),
    served by tonic on the core's runtime. Binds and starts serving in the constructor.

    ``tls_cert``/``tls_key`` (PEM) turn on TLS; ``tls_client_ca`` (PEM) also requires client
    certificates signed by that CA (mutual TLS). ``max_message_bytes`` bounds decoded and
    encoded messages. With ``logs``, each Python node attempt's lines are taken from it
    (:class:`NodeLogStore`) and sent before the attempt's end. With ``code_identity``
    (``(import_path, node_id) -> str``), a cached Python node's code identity is the one
    it returns, computed on this process's code, instead of the sender's (once per
    workflow spec). Raises ``EngineStartError`` if the address cannot be bound or the TLS
    material is invalid.
    """

    def __new__(
        cls,
        engine_id: str,
        invoke: Invoke,
        resolve: Resolve,
        *,
        host: str = "127.0.0.1",
        port: int = 50051,
        capacity: int = 10,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls_client_ca: bytes | None = None,
        max_message_bytes: int = 16777216,
        logs: NodeLogStore | None = None,
        code_identity: Callable[[str, str], str] | None = None,
    ) -> EngineServerRef: ...
    @property
    def engine_id(self) -> str: ...
    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""

    def info(self) -> dict[str, Any]:
        """``engine_id``, ``version``, ``capacity``, ``active_runs``, ``uptime_seconds``,
        ``draining``, ``active_run_ids``."""

    def drain(self, grace: float) -> int:
        """Refuse new runs (``UNAVAILABLE``; health ``NOT_SERVING``), wait up to ``grace``
        seconds for active runs, cancel the rest and wait for them to report. Returns how many
        runs were cancelled. Releases the GIL."""

    def stop(self) -> None:
        """Stop serving (cancelling any active run) and release the port; sessions and
        watchers end too (their clients would never end them). Idempotent."""

    def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the server to stop; True once it has."""

@final
class EngineSession:
    """One ``Session`` stream to the engine at ``address`` (``host:port``), driven by tonic
    on the core's ``dagengine-io`` thread (a current-thread runtime shared by every session
    of the process): the orchestrator's path to a remote engine. It connects in the
    background; a failure to connect (within ``connect_timeout`` seconds) ends it like any
    later break.

    ``on_replies(messages)`` gets encoded ``SessionReplies`` messages as they came off the
    wire; ``on_end(code, message)`` is called once when the session is over (``code``: the
    gRPC status code, ``1`` CANCELLED after :meth:`close`; the message does not name the
    engine). Both are called on ``dagengine-io``, which hands over what every session
    received in one round of I/O under one attach to the interpreter; no ``on_replies``
    comes after ``on_end``. An exception they raise is reported as unraisable. ``tls`` turns
    on TLS, verified with ``ca_cert`` (PEM; ``None``: the platform's roots), with
    ``client_cert``/``client_key`` for mutual TLS and ``server_name`` to check instead of
    the address's host. ``keepalive`` is the seconds between HTTP/2 pings (no answer within
    as long again breaks the session). Raises ``EngineUnavailable`` for an address or TLS
    material it cannot use, ``EngineRuntimeError`` in a child process forked from one that
    used sessions (a session inherited that way is ended: it sends nothing).
    """

    def __new__(
        cls,
        address: str,
        on_replies: Callable[[list[bytes]], None],
        on_end: Callable[[int, str], None],
        *,
        max_message_bytes: int,
        keepalive: float,
        connect_timeout: float = 5.0,
        tls: bool = False,
        ca_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        server_name: str | None = None,
    ) -> EngineSession: ...
    def start(self, request: bytes) -> bool:
        """Send a run (an encoded ``RunRequest``); it goes out with the runs started before
        the next write. ``False`` once the session has ended (the run was not sent).
        Raises ``MessageTooLarge`` for a run that would not fit in a message with its
        framing (sent, it would break the stream and every run on it)."""

    def cancel(self, run_id: str) -> bool:
        """Ask the engine to cancel a run of this session (after every start sent before);
        ``False`` once the session has ended."""

    def close(self) -> None:
        """End the session: the engine cancels the runs still on it. ``on_end`` is called
        (CANCELLED) if it was not yet."""

    @property
    def ended(self) -> bool:
        """Whether the session has ended."""
