"""Where a dispatched run executes: an in-process :class:`Engine` or a remote engine reached
over gRPC. Both present the same small interface to the orchestrator (:class:`Backend`), so
dispatch, failover and bookkeeping do not care which one runs a run.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from dagengine.engine import (
    DEFAULT_KEEPALIVE_SECONDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    AsyncEngineClient,
    AsyncRunStream,
    EngineSession,
    TLSConfig,
    build_run_request,
    encoded_workflow_field,
    open_session,
    refusal_error,
    result_from_proto,
    session_ended_error,
)
from dagengine.exceptions import (
    DagEngineError,
    EngineBusy,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    MessageTooLarge,
)
from dagengine.nodes import LuaExecutor, NoopExecutor
from dagengine.orchestrator.cache import EntriesCache, _cached_nodes
from dagengine.orchestrator.threads import LoopThread, RunThreads
from dagengine.results import NodeEvent, RunResult
from dagengine.v1 import engine_pb2 as pb
from dagengine.workflow import DAG, LocalRun, SubWorkflowRunner
from dagengine.workflow import INLINE_BUDGET as CORE_INLINE_BUDGET

__all__ = [
    "Backend",
    "Engine",
    "Job",
    "LocalBackend",
    "LoopThread",
    "RemoteBackend",
    "RunThreads",
    "native_only",
]

log = logging.getLogger("dagengine.orchestrator")
T = TypeVar("T")

#: How long (seconds) :meth:`LocalBackend.launch` drives a run on its caller's thread before
#: the run goes on elsewhere: the core's own budget (a 3-node Lua run takes ~15 µs), the one
#: ``dag.run`` and the gRPC service use.
INLINE_BUDGET = CORE_INLINE_BUDGET


def native_only(dag: DAG) -> bool:
    """Whether the core runs ``dag`` without calling Python: only Lua and no-op nodes, no
    Python ``when``, no cached node (its cache is looked up in Python). Such a run needs no
    thread of the orchestrator's while a short one runs (:meth:`LocalBackend.launch`)."""
    known = _NATIVE.get(dag)
    if known is None:
        known = _NATIVE[dag] = all(
            isinstance(node.executor, (LuaExecutor, NoopExecutor))
            and (node.when is None or isinstance(node.when, str))
            and node.cache is None
            for node in dag.nodes.values()
        )
    return known


_NATIVE: weakref.WeakKeyDictionary[DAG, bool] = weakref.WeakKeyDictionary()


@dataclass
class Job:
    """One attempt of a run, as handed to a backend."""

    run_id: str
    attempt: int
    workflow_id: str
    version: str
    dag: DAG
    #: The wire form (``None`` for a DAG only in-process engines can run).
    spec: pb.WorkflowSpec | None
    inputs: Mapping[str, Any]
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)
    depth: int = 0
    parent_run_id: str = ""
    parent_node_id: str = ""
    deadline: float | None = None
    #: The W3C trace context the engine runs it in (see :mod:`dagengine.tracing`).
    trace_context: Mapping[str, str] | None = None
    #: Entries of the workflow's cached nodes (see :mod:`dagengine.orchestrator.cache`).
    cache_entries: list[tuple[str, str, str, str]] = field(default_factory=list)

    def request(
        self, workflow: pb.WorkflowSpec | None, *, result_json: bool = False
    ) -> pb.RunRequest:
        """This attempt's ``RunRequest``, with ``workflow`` (``None``: without one, see
        :func:`~dagengine.engine.build_run_request`)."""
        return build_run_request(
            workflow,
            self.inputs,
            run_id=self.run_id,
            attempt=self.attempt,
            completed=self.completed or None,
            deadline=self.deadline,
            parent_run_id=self.parent_run_id,
            parent_node_id=self.parent_node_id,
            depth=self.depth,
            result_json=result_json,
            trace_context=self.trace_context,
            cache_entries=[(n, k, o.encode(), r) for n, k, o, r in self.cache_entries],
        )


class Backend(Protocol):
    """Runs jobs somewhere. ``execute`` blocks until the run ends and returns its result,
    calling ``on_event`` with every event on the way (``node_succeeded`` events carry the
    node's output in ``detail["output"]``). It raises :class:`EngineUnavailable` when the
    engine is lost mid-run (the orchestrator then re-dispatches the run elsewhere)."""

    engine_id: str
    capacity: int

    def execute(
        self,
        job: Job,
        on_event: Callable[[NodeEvent], None],
        subworkflows: SubWorkflowRunner,
    ) -> RunResult: ...

    def cancel(self, run_id: str) -> None: ...

    def abandon(self, run_id: str) -> None: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class Engine:
    """An engine inside this process: runs workflows on the core's runtime, no network.

    ``orch.register_engine("engine-1", Engine(capacity=8))``; an :class:`Orchestrator`
    created without engines gets one of these as ``local``.
    """

    def __init__(self, capacity: int = 10) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity

    def __repr__(self) -> str:
        return f"Engine(capacity={self.capacity})"


def _time_left(job: Job) -> float | None:
    """Seconds left before the job's deadline (at least 1 ms), or ``None`` without one."""
    return None if job.deadline is None else max(job.deadline - time.time(), 0.001)


class LocalBackend:
    """Runs jobs on an in-process :class:`Engine`."""

    def __init__(self, engine_id: str, engine: Engine) -> None:
        self.engine_id = engine_id
        self.capacity = engine.capacity
        self._runs: dict[str, LocalRun] = {}
        self._lock = threading.Lock()

    def execute(
        self,
        job: Job,
        on_event: Callable[[NodeEvent], None],
        subworkflows: SubWorkflowRunner,
    ) -> RunResult:
        run = job.dag.start(
            job.inputs,
            run_id=job.run_id,
            completed=job.completed or None,
            subworkflow_runner=subworkflows,
            timeout=_time_left(job),
            events=True,
            event_outputs=True,
            # Without cached nodes, no cache: checking one against the Cache protocol costs
            # more than the rest of starting a short run.
            cache=EntriesCache(job.cache_entries) if _cached_nodes(job.dag) else None,
        )
        with self._lock:
            self._runs[job.run_id] = run
        try:
            for event in run.events():
                on_event(event)
            # Every event is out once the run is done: its result is read at once (a wait
            # releases and re-takes the GIL, a hand-off under load, even for a run ended).
            return run.result() if run.done else run.wait()
        finally:
            with self._lock:
                self._runs.pop(job.run_id, None)

    def launch(
        self,
        job: Job,
        on_events: Callable[[list[NodeEvent]], None],
        on_end: Callable[[RunResult | None, BaseException | None], None],
        spawn: Callable[[Callable[[], None]], object],
    ) -> None:
        """Start a run of a DAG the core runs without Python (:func:`native_only`) on this
        thread, for up to :data:`INLINE_BUDGET`, then report its events (``on_events``, in
        batches) and its end (``on_end``: its result or what failed). A short run (a few Lua
        nodes) has ended within the budget: both are called here, before this returns, with
        no thread hand-off at all. A longer one goes on on the core's threads, and
        ``spawn(follow)`` is to call ``follow()`` on a thread that may block: it reports
        the events as they come (``node.started`` of a long node is seen while it runs),
        then the end."""
        run = job.dag.start(
            job.inputs,
            run_id=job.run_id,
            completed=job.completed or None,
            timeout=_time_left(job),
            events=True,
            event_outputs=True,
            cache=None,
            _inline_budget=INLINE_BUDGET,
        )
        if run.done:
            self._follow(run, on_events, on_end)
            return
        with self._lock:
            self._runs[job.run_id] = run

        def follow() -> None:
            try:
                self._follow(run, on_events, on_end)
            finally:
                with self._lock:
                    self._runs.pop(job.run_id, None)

        spawn(follow)

    @staticmethod
    def _follow(
        run: LocalRun,
        on_events: Callable[[list[NodeEvent]], None],
        on_end: Callable[[RunResult | None, BaseException | None], None],
    ) -> None:
        """Report ``run``'s events as they come, then its end."""
        try:
            for batch in run.event_batches():
                on_events(batch)
            result = run.result() if run.done else run.wait()
        except BaseException as exc:  # (a run must always settle)
            on_end(None, exc)
            return
        on_end(result, None)

    def cancel(self, run_id: str) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            run.cancel()

    def abandon(self, run_id: str) -> None:
        # An in-process engine cannot be lost without losing the orchestrator with it.
        self.cancel(run_id)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel()


#: ``threading.get_ident()`` of the core's ``dagengine-io`` thread, once it has handed
#: replies over.
_io_thread: int | None = None


@dataclass(slots=True)
class _Launched:
    """A run started on a remote engine's session: where its events and its end go."""

    session: object  # the token of the session it went out on
    on_wire: Callable[[Sequence[pb.RunEvent]], None]
    on_end: Callable[[RunResult | None, BaseException | None], None]


class RemoteBackend:
    """Runs jobs on an engine process over gRPC. The orchestrator's runs (:meth:`launch`)
    share one ``Session`` stream per engine, driven from the Rust core
    (:class:`dagengine.engine.EngineSession`): starting a run is a push onto a channel, and
    the replies of every engine reach Python on one thread, a burst at a time. Other
    calls (health, info, cancel without a session, :meth:`execute`) are coroutines on a
    shared :class:`LoopThread`."""

    def __init__(
        self,
        engine_id: str,
        address: str,
        capacity: int,
        loop: LoopThread,
        *,
        tls: TLSConfig | None = None,
        timeout: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: float = DEFAULT_KEEPALIVE_SECONDS,
    ) -> None:
        self.engine_id = engine_id
        self.address = address
        self.capacity = capacity
        self._loop = loop
        self._tls = tls
        self._timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._keepalive = keepalive

        async def make() -> AsyncEngineClient:
            return AsyncEngineClient(
                address,
                tls=tls,
                timeout=timeout,
                max_message_bytes=max_message_bytes,
                keepalive=keepalive,
            )

        self._client = loop.run(make(), timeout=30)
        self._lock = threading.Lock()
        # The session launched runs go out on (a token names it to its runs): opened on
        # first use, again once it has ended.
        self._session: tuple[object, EngineSession] | None = None
        self._launched: dict[str, _Launched] = {}
        self._handing_over = 0  # calls of _replies under way
        self._handed_over = threading.Condition(self._lock)
        # Each workflow's spec, encoded once as a RunRequest field.
        self._specs: dict[tuple[str, str], tuple[pb.WorkflowSpec, bytes]] = {}
        # Runs of :meth:`execute` (a Run call each, on the loop).
        self._streams: dict[str, AsyncRunStream] = {}
        self._abandoned: set[str] = set()

    # -- the orchestrator's runs: one session ------------------------------------------------

    def launch(
        self,
        job: Job,
        on_wire: Callable[[Sequence[pb.RunEvent]], None],
        on_end: Callable[[RunResult | None, BaseException | None], None],
    ) -> None:
        """Start ``job`` and return at once. ``on_wire`` gets the run's events as the
        engine's ``RunEvent`` messages, one call per burst (the last carries the result);
        then ``on_end`` is called exactly once: with the result, or with the error the run
        ended with (:class:`EngineUnavailable` when the engine was lost or abandoned, the
        engine's refusal such as :class:`EngineBusy`). Both are called on the core's
        ``dagengine-io`` thread, or on the caller's if the run fails here. Raises what the
        request cannot be built for (``MessageTooLarge``, inputs that are not JSON), before
        anything is sent."""
        if job.spec is None:
            raise DagEngineError(
                f"{job.workflow_id}@{job.version} has no portable spec (Python closures); "
                "only in-process engines can run it"
            )
        request = self._encode(job)
        with self._lock:
            if job.run_id in self._launched:
                raise InvalidRequest(
                    f"engine {self.address}: run {job.run_id} is already running here",
                    address=self.address,
                )
            token, session = self._session_locked()
            self._launched[job.run_id] = launched = _Launched(token, on_wire, on_end)
        try:
            sent = session.start(request)
        except BaseException:
            self._take(job.run_id, launched)
            raise
        # A session that ended meanwhile may have had its end handled before this run was
        # recorded: the run is failed here then (once: whoever takes it out).
        if not sent and self._take(job.run_id, launched):
            on_end(
                None,
                EngineUnavailable(
                    f"engine {self.address}: the session ended before run {job.run_id} went out",
                    address=self.address,
                ),
            )

    def _encode(self, job: Job) -> bytes:
        assert job.spec is not None
        key = (job.workflow_id, job.version)
        cached = self._specs.get(key)
        if cached is None or cached[0] is not job.spec:
            cached = self._specs[key] = (job.spec, encoded_workflow_field(job.spec))
        # Recorded as it comes: the engine builds the result's JSON text, in Rust and off
        # this process's GIL.
        head = job.request(None, result_json=True)
        size = head.ByteSize() + len(cached[1])
        # On the wire it is a field of a SessionRequest: its key and its length come too.
        framed = size + 1 + max(1, (size.bit_length() + 6) // 7)
        if framed > self._max_message_bytes:
            raise MessageTooLarge(
                f"engine {self.address}: run {job.run_id}: the request is {size} bytes "
                f"({framed} framed), over the client's max_message_bytes of "
                f"{self._max_message_bytes} (inputs are {len(head.inputs_json)} bytes)",
                address=self.address,
            )
        return head.SerializeToString() + cached[1]

    def _session_locked(self) -> tuple[object, EngineSession]:
        """The open session, or a new one. Called with the lock held."""
        if self._session is not None and not self._session[1].ended:
            return self._session
        token = object()
        # The session's callbacks hold this backend weakly: the session (in Rust, out of
        # the garbage collector's sight) must not keep it alive.
        ref = weakref.ref(self)

        def replies(messages: list[bytes]) -> None:
            backend = ref()
            if backend is not None:
                backend._replies(token, messages)

        def ended(code: int, message: str) -> None:
            backend = ref()
            if backend is not None:
                backend._ended(token, code, message)

        session = open_session(
            self.address,
            replies,
            ended,
            tls=self._tls,
            max_message_bytes=self._max_message_bytes,
            keepalive=self._keepalive,
            connect_timeout=self._timeout,
        )
        self._session = (token, session)
        return self._session

    def _take(self, run_id: str, launched: _Launched | None = None) -> _Launched | None:
        """Take a run out of the launched ones (``launched``: only if it is that one)."""
        with self._lock:
            current = self._launched.get(run_id)
            if current is None or (launched is not None and current is not launched):
                return None
            del self._launched[run_id]
            return current

    def _replies(self, token: object, messages: list[bytes]) -> None:
        """``SessionReplies`` messages of the session ``token`` names (on ``dagengine-io``)."""
        global _io_thread
        _io_thread = threading.get_ident()
        with self._lock:
            self._handing_over += 1
        try:
            for raw in messages:
                for msg in pb.SessionReplies.FromString(raw).runs:
                    launched = self._launched.get(msg.run_id)
                    if launched is None or launched.session is not token:
                        continue  # abandoned, or now running on a newer session
                    try:
                        self._reply(msg, launched)
                    except Exception:  # one run's trouble must not cost the others theirs
                        log.exception("run %s on %s: reply not handled", msg.run_id, self.engine_id)
        finally:
            with self._lock:
                self._handing_over -= 1
                if not self._handing_over:
                    self._handed_over.notify_all()

    def _reply(self, msg: pb.SessionEvents, launched: _Launched) -> None:
        run_id = msg.run_id
        if msg.HasField("refused"):
            error = refusal_error(msg.refused, self.address, run_id)
            if error.code == grpc.StatusCode.ALREADY_EXISTS.name:
                # An earlier attempt of the run, abandoned here (its engine was presumed
                # dead), still runs on it: busy with it, for a moment (it is being
                # cancelled), not a failure of the run.
                error = EngineBusy(str(error), code=error.code, address=self.address)
            if self._take(run_id, launched):
                launched.on_end(None, error)
            return
        try:
            launched.on_wire(msg.events)
            result = None
            for event in msg.events:
                if event.HasField("result"):
                    result = result_from_proto(event.result)
        except BaseException as exc:
            if self._take(run_id, launched):
                launched.on_end(None, exc)
            return
        if result is not None and self._take(run_id, launched):
            launched.on_end(result, None)

    def _ended(self, token: object, code: int, message: str) -> None:
        """A session ended (on ``dagengine-io``, or on the closing thread): every run still
        on it is lost."""
        with self._lock:
            if self._session is not None and self._session[0] is token:
                self._session = None
            lost = [(rid, run) for rid, run in self._launched.items() if run.session is token]
            for rid, _ in lost:
                del self._launched[rid]
        if not lost:
            return
        # The engine refuses runs in band: a status on the stream itself is the transport's,
        # and the runs' fate is unknown (EngineUnavailable, whatever the code).
        error = session_ended_error(code, message, self.address)
        for rid, run in lost:
            try:
                run.on_end(None, error)
            except Exception:
                log.exception("run %s on %s: its end not handled", rid, self.engine_id)

    # -- a run per call (the Backend interface) -------------------------------------------------

    def execute(
        self,
        job: Job,
        on_event: Callable[[NodeEvent], None],
        subworkflows: SubWorkflowRunner,
    ) -> RunResult:
        # Sub-workflow nodes on a remote engine call the orchestrator's RunSubWorkflow
        # themselves; the runner argument only serves in-process engines.
        del subworkflows
        return self._loop.run(self.execute_async(job, on_event))

    async def execute_async(
        self,
        job: Job,
        on_event: Callable[[NodeEvent], None] | None = None,
    ) -> RunResult:
        """Run ``job`` over a ``Run`` call of its own and return its result (see
        :class:`Backend`); on the loop thread. Events go to ``on_event``, decoded."""
        if job.spec is None:
            raise DagEngineError(
                f"{job.workflow_id}@{job.version} has no portable spec (Python closures); "
                "only in-process engines can run it"
            )
        stream = self._client.stream_request(job.request(job.spec))
        with self._lock:
            self._streams[job.run_id] = stream
        try:
            async with stream:
                async for item in stream:
                    if isinstance(item, RunResult):
                        return item
                    if on_event is not None:
                        on_event(item)
            raise EngineUnavailable(
                f"engine {self.engine_id} ({self.address}) ended run {job.run_id} without a result"
            )
        except asyncio.CancelledError:
            # grpc.aio ends a call we cancelled (abandon) with CancelledError, not RpcError.
            with self._lock:
                abandoned = job.run_id in self._abandoned
            if not abandoned:
                raise
            raise self._stopped_answering(job.run_id) from None
        except EngineError:
            with self._lock:
                abandoned = job.run_id in self._abandoned
            if abandoned:
                # We hung up on it (the engine failed its health checks).
                raise self._stopped_answering(job.run_id) from None
            raise
        finally:
            with self._lock:
                self._streams.pop(job.run_id, None)
                self._abandoned.discard(job.run_id)

    def _stopped_answering(self, run_id: str) -> EngineUnavailable:
        return EngineUnavailable(
            f"engine {self.engine_id} ({self.address}) stopped answering during run {run_id}",
            address=self.address,
        )

    def cancel(self, run_id: str) -> None:
        with self._lock:
            launched = self._launched.get(run_id)
            session = self._session
        if (
            launched is not None
            and session is not None
            and session[0] is launched.session
            and session[1].cancel(run_id)
        ):
            # On the stream its start went out on: it cannot overtake the start (a Cancel
            # call could, and the engine would drop it as unknown).
            return

        async def cancel() -> None:
            try:
                await self._client.cancel(run_id)
            except EngineUnavailable:
                # Gone anyway: its stream breaks and the run is settled then.
                self.abandon(run_id)
            except EngineError:
                log.warning("cancelling run %s on %s failed", run_id, self.engine_id, exc_info=True)

        self._loop.submit(cancel())

    def abandon(self, run_id: str) -> None:
        """Stop listening to a run (the engine is presumed dead): it ends at once with
        :class:`EngineUnavailable`, and anything the engine sends of it later is ignored."""
        launched = self._take(run_id)
        if launched is not None:
            with self._lock:
                session = self._session
            if session is not None and session[0] is launched.session:
                # Should the engine answer again, this attempt must not be running there
                # when the run comes back to it.
                session[1].cancel(run_id)
            launched.on_end(None, self._stopped_answering(run_id))
            return
        with self._lock:
            stream = self._streams.get(run_id)
            if stream is not None:
                self._abandoned.add(run_id)
        if stream is not None:
            self._loop.call(stream.close)

    def abandon_all(self) -> list[str]:
        """Abandon every run on this engine; returns their ids. The session goes too: runs
        after a recovery open a new one."""
        with self._lock:
            launched, self._launched = self._launched, {}
            session, self._session = self._session, None
            streams = dict(self._streams)
            self._abandoned.update(streams)
        if session is not None:
            session[1].close()
        for run_id, run in launched.items():
            try:
                run.on_end(None, self._stopped_answering(run_id))
            except Exception:
                log.exception("run %s on %s: its end not handled", run_id, self.engine_id)
        for stream in streams.values():
            self._loop.call(stream.close)
        return [*launched, *streams]

    def healthy(self) -> bool:
        async def check() -> bool:
            return await self._client.health() == "SERVING"

        try:
            return self._loop.run(check(), timeout=10)
        except Exception:  # any failure to answer is "not healthy"
            return False

    def close(self) -> None:
        self.abandon_all()
        # A hand-over in progress may still be recording replies of the runs just
        # abandoned: the owner closes its store next.
        with self._lock:
            # (Not on that thread itself: it would wait for its own hand-over.)
            if threading.get_ident() != _io_thread:
                self._handed_over.wait_for(lambda: not self._handing_over, timeout=10)
        try:
            self._loop.run(self._client.close(), timeout=10)
        except Exception:
            log.warning("closing the client of engine %s failed", self.engine_id, exc_info=True)


def default_engine_id() -> str:
    """The original system's default engine id: the host name."""
    return socket.gethostname()
