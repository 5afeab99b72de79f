"""The orchestrator: decides where and what runs, and never loses a run.

Life of a run::

    execute_workflow ─► store: queued ─► queue ─► dispatcher ─► store: claim attempt n
        ─► worker thread: backend.execute(job) ─► events ─► store: node outputs (fenced by n)
        ─► result ─► store: finish (fenced by n) ─► waiters, monitor

* The **store** (SQLite) is the source of truth: every run, its resolved versions, each
  completed node's output and every event. A restarted orchestrator re-queues what was
  queued or running and resumes it with the outputs already stored.
* **Fencing**: each dispatch claims a new attempt number; outputs and results carry it, and
  the store ignores anything from an older attempt (a partitioned engine that comes back).
* **Failover**: a run whose engine is lost (stream broken, health checks failing, drained)
  goes back to the front of the queue with its completed outputs and runs on another engine.
* **Capacity**: engines at capacity are not chosen; when all are full runs wait in a bounded
  FIFO queue (:class:`~dagengine.exceptions.QueueFull` past the bound).

Where a run is, and what follows each event, is decided by its :mod:`.lifecycle` (a state
machine without I/O); :class:`Orchestrator` is its shell: it owns the threads, the store, the
engines (:mod:`.engines`) and the event bus, feeds each run's events to the machine under its
lock and carries out the actions it returns (:meth:`Orchestrator._apply`); each attempt on an
engine is built, run and concluded by :mod:`.attempts`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagengine._jsondata import check_json_data
from dagengine.engine import (
    TLSConfig,
    workflow_to_proto,
)
from dagengine.engine._wire import with_code_identities
from dagengine.exceptions import (
    DagEngineError,
    RunNotFound,
    SpecError,
)
from dagengine.inputs import validate_inputs
from dagengine.orchestrator.attempts import launch_local, launch_remote, run_in_process
from dagengine.orchestrator.backends import (
    Engine,
    LoopThread,
    RemoteBackend,
    RunThreads,
    native_only,
)
from dagengine.orchestrator.balancer import EngineLoad, LoadBalancer, RunQueue, make_balancer
from dagengine.orchestrator.config import Config
from dagengine.orchestrator.engines import EngineSet, EngineSlot
from dagengine.orchestrator.events import EventBus
from dagengine.orchestrator.lifecycle import Action, Event, State
from dagengine.orchestrator.pruner import Pruner
from dagengine.orchestrator.recording import (
    queued_data,
)
from dagengine.orchestrator.recovery import Recovery
from dagengine.orchestrator.registry import WorkflowRegistry, WorkflowVersion
from dagengine.orchestrator.replicas import new_replica_id, replica_coordinator
from dagengine.orchestrator.retry import Reuse
from dagengine.orchestrator.runs import (
    ActiveRun,
    RunHandle,
    RunInfo,
    cancelled_result,
    settle_run,
)
from dagengine.orchestrator.store import RunRecord, StoreTarget, store_from
from dagengine.orchestrator.store.retention import (
    RetentionPolicy,
    retention_from_metadata,
    workflow_retentions,
)
from dagengine.orchestrator.subworkflows import SubWorkflowCoordinator, child_output
from dagengine.results import RunResult
from dagengine.v1 import engine_pb2 as pb
from dagengine.workflow import DAG

if TYPE_CHECKING:
    from dagengine.orchestrator.cluster import Cluster

# RunHandle, RunInfo (.runs), SubWorkflowCoordinator and child_output (.subworkflows) are
# imported from here too, where they were defined before.
__all__ = ["Orchestrator", "RunHandle", "RunInfo", "SubWorkflowCoordinator", "child_output"]

log = logging.getLogger("dagengine.orchestrator")

_FINISHED = frozenset({"succeeded", "failed", "cancelled"})
# How long an engine that refused a run as full is passed over before it is tried again.
_BUSY_BACKOFF = 0.2


_Run = ActiveRun

# Runs the dispatcher may start (in the queue, not cancelled meanwhile).
_DISPATCHABLE = (State.QUEUED, State.FAILING_OVER)


def _on_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Orchestrator:
    """Registry, dispatch, failover and bookkeeping of workflow runs.

    ``Orchestrator()`` is the embedded default: an in-process engine (``local``) and a SQLite
    store at the default path (``store=":memory:"`` keeps nothing; a ``postgresql://`` URL: see
    :func:`~dagengine.orchestrator.store.store_from`). ``replica=True`` (default:
    ``Config.replica``, ``DAGENGINE_REPLICA``) makes it one of several active orchestrators
    on one PostgreSQL store (:mod:`~dagengine.orchestrator.replicas`). Register more engines with
    :meth:`register_engine`; :meth:`from_config` builds a distributed orchestrator (remote
    engines found by discovery).
    """

    def __init__(
        self,
        *,
        store: StoreTarget | None = None,
        config: Config | None = None,
        embedded_engine: bool = True,
        tls: TLSConfig | None = None,
        recover: bool = True,
        replica: bool | None = None,
    ) -> None:
        self.config = config if config is not None else Config.local_from_env()
        replicated = self.config.replica if replica is None else replica
        self.store, self._owns_store = store_from(
            store or self.config.store_path,
            exclusive=not replicated,
            replica=new_replica_id() if replicated else None,
            lease_ttl=self.config.lease_ttl,
        )
        #: The replica side (leases, take-overs, the shared event stream) when this is one of
        #: several orchestrators on one PostgreSQL store (``replica=True``), else ``None``.
        self.replicas = replica_coordinator(self, replicated)
        self.registry = WorkflowRegistry(self.store)
        self.registry.shared = self.replicas is not None
        self._reuse = Reuse(self.store)
        self.events = EventBus(self.store)
        self.balancer: LoadBalancer = make_balancer(self.config.load_balancer_type)
        self._queue: RunQueue[str] = RunQueue(self.config.queue_limit)
        self._front: collections.deque[str] = collections.deque()
        self._runs: dict[str, _Run] = {}
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        self._stopping = False
        self._coordinator = SubWorkflowCoordinator(self, self.config.max_subworkflow_depth)
        self._specs: dict[tuple[str, str], pb.WorkflowSpec] = {}
        # In-process runs block a thread for their duration (a parent waiting for its
        # sub-workflow too), so the pool is sized for waiting, not for CPUs; threads are
        # started only as needed. Remote runs take no thread: they are sent from the
        # dispatching thread and followed on the core's dagengine-io thread.
        self._pool = RunThreads("dagengine-run", max_threads=1024)
        self._loop = LoopThread()
        self._engine_set = EngineSet(
            self._lock, self._wakeup, self.events, self.balancer, self._loop, tls
        )
        self._engines = self._engine_set.slots
        #: The distributed side (discovery, health checks, gRPC), set by :meth:`from_config`.
        self.cluster: Cluster | None = None
        if embedded_engine:
            self.register_engine("local", Engine())
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="dagengine-dispatch", daemon=True
        )
        self._dispatcher.start()
        # Stored runs whose workflow version cannot be built yet (see recover()).
        self._parked: dict[str, str] = {}  # run id -> why it waits
        self._parked_wakeup = threading.Condition(self._lock)
        self._recovery = Recovery(self)
        if recover:
            self.recover()
        self.pruner = Pruner(
            self.store, self.events, self.retention_policy, interval=self.config.prune_interval
        )
        self.pruner.start()

    # -- configuration --------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: Config, *, grpc_port: int | None = None, **kwargs: Any
    ) -> Orchestrator:
        """A distributed orchestrator: store, balancer and limits from ``config`` (see
        :meth:`Config.from_env`); engines come from its discovery (static ``ENGINES``,
        self-registration over ``OrchestratorService``, or Kubernetes), are health-checked
        every ``ENGINE_HEALTH_CHECK_INTERVAL`` seconds, and ``OrchestratorService`` is served
        on ``GRPC_PORT`` (``grpc_port`` overrides it; 0 picks a free port).

        The building is the cluster's (:func:`dagengine.orchestrator.cluster.
        orchestrator_from_config`); this is its name on the class, kept for callers."""
        from dagengine.orchestrator.cluster import orchestrator_from_config

        return orchestrator_from_config(cls, config, grpc_port=grpc_port, **kwargs)

    # -- engines ------------------------------------------------------------------------

    def register_engine(
        self, engine_id: str, engine: Engine | str, *, capacity: int | None = None
    ) -> None:
        """Add an engine: an in-process :class:`Engine`, or the ``host:port`` of an engine
        process (``capacity`` defaults to what the engine reports). Registering an id again
        replaces its address/capacity (an engine that restarted)."""
        self._engine_set.register(engine_id, engine, capacity=capacity)

    def unregister_engine(self, engine_id: str) -> None:
        """Remove an engine; its runs are re-dispatched."""
        self._engine_set.unregister(engine_id)

    def mark_unhealthy(
        self,
        engine_id: str,
        reason: str = "health check failed",
        data: Mapping[str, Any] | None = None,
        *,
        draining: bool = False,
    ) -> None:
        """Stop sending runs to an engine and re-dispatch the runs it has — unless it is
        ``draining``: it finishes its runs (or reports them drained, and they are
        re-dispatched then), it just takes no new ones."""
        self._engine_set.mark_unhealthy(engine_id, reason, data, draining=draining)

    def mark_healthy(
        self,
        engine_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        checked_at: float | None = None,
    ) -> None:
        """Send runs to an engine again. ``checked_at`` (``time.monotonic()``) is when the
        check that found it healthy started: a check older than the engine's last failure
        says nothing."""
        self._engine_set.mark_healthy(engine_id, data, checked_at=checked_at)

    def engines(self) -> dict[str, EngineLoad]:
        """Each engine's capacity and active runs (healthy engines only)."""
        return self._engine_set.loads()

    def engine_address(self, engine_id: str) -> str | None:
        """The ``host:port`` of a registered remote engine (``None`` for unknown or in-process
        engines); :meth:`Monitor.attach_to_engine` follows it."""
        return self._engine_set.address(engine_id)

    def workflow_of_run(self, run_id: str) -> str | None:
        """The workflow id of a run, or ``None`` for an unknown run."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            return run.version.workflow_id
        rec = self.store.get_run(run_id)
        return rec.workflow_id if rec is not None else None

    # -- workflows ------------------------------------------------------------------------

    def register_workflow(
        self,
        workflow_id: str | DAG,
        version: str | None = None,
        builder: DAG | Mapping[str, Any] | Callable[[], DAG | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowVersion:
        """Register ``workflow_id`` at ``version`` (semver). ``builder`` is a DAG, a spec dict,
        or a callable returning one (called once, here). See :class:`WorkflowRegistry` for the
        versioning rules. ``register_workflow(dag)`` takes the id and version from the DAG
        (a decorated workflow's, from its decorator)."""
        if isinstance(workflow_id, DAG) and builder is None:  # its own id and version
            dag = workflow_id
            workflow_id, version, builder = dag.id or "", dag.version, dag
        if not isinstance(workflow_id, str) or version is None or builder is None:
            raise TypeError("register_workflow needs (id, version, builder) or a versioned DAG")
        try:
            retention_from_metadata(metadata or {})
        except ValueError as exc:
            raise SpecError(f"workflow {workflow_id!r}: {exc}", path="metadata") from None
        entry = self.registry.register(workflow_id, version, builder, metadata)
        with self._lock:
            if self._parked:
                self._parked_wakeup.notify_all()  # a waiting run may be runnable now
        return entry

    def retention_policy(self) -> RetentionPolicy:
        """The retention of finished runs now: the configuration's (``Config.retention``,
        ``keep_last``, ``export_dir``) and each workflow's own, given at registration
        (``metadata={"retention": "7d", "keep_last": 10}``, latest version's)."""
        workflows = workflow_retentions(
            (info.workflow_id, info.metadata) for info in self.registry.list_workflows()
        )
        return RetentionPolicy(
            self.config.retention, self.config.keep_last, workflows, self.config.export_dir
        )

    def list_workflows(self) -> list[Any]:
        """Registered workflows with their versions."""
        return self.registry.list_workflows()

    # -- runs -----------------------------------------------------------------------------

    def execute_workflow(
        self,
        workflow_id: str,
        inputs: Mapping[str, Any] | None = None,
        version: str | None = None,
        wait: bool = True,
        *,
        key: str | None = None,
        timeout: float | None = None,
        run_id: str | None = None,
    ) -> RunResult | RunHandle:
        """Run a workflow: its ``version``, or the latest. With ``wait`` (default) block
        until it ends and return its :class:`RunResult`; else return a :class:`RunHandle` at
        once. ``key`` is the load-balancing key (default: the workflow id); ``timeout``
        bounds the run; ``run_id`` names the run (default: a fresh id; an id the store
        already has is refused). Raises :class:`QueueFull` when too many runs wait for an
        engine."""
        wv = self.registry.get(workflow_id, version)
        handle = self._submit(
            wv, dict(inputs or {}), key=key, timeout=timeout, run_id=run_id, durable=not wait
        )
        if not wait:
            return handle
        try:
            return handle.result()
        except KeyboardInterrupt:
            self.cancel_run(handle.run_id)
            raise

    async def execute_workflow_async(
        self,
        workflow_id: str,
        inputs: Mapping[str, Any] | None = None,
        version: str | None = None,
        *,
        key: str | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Like :meth:`execute_workflow`, awaitable."""
        wv = self.registry.get(workflow_id, version)
        handle = self._submit(wv, dict(inputs or {}), key=key, timeout=timeout, durable=False)
        return await handle.result_async()

    def get_run(self, run_id: str) -> RunInfo:
        """A run's record (:class:`RunNotFound` if there is none)."""
        rec = self.store.get_run(run_id)
        if rec is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        return RunInfo.from_record(rec)

    def list_runs(
        self,
        workflow_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs, newest first."""
        return [
            RunInfo.from_record(r)
            for r in self.store.list_runs(
                workflow_id=workflow_id, status=status, limit=limit, offset=offset
            )
        ]

    def cancel_run(self, run_id: str) -> bool:
        """Cancel a run and its sub-workflows. False if it had already finished. (A replica
        asks the replica that owns the run, if another one does.)"""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return self.replicas is not None and self.replicas.request_cancel(run_id)
        with self._lock:
            if self._runs.get(run_id) is not run:
                return False  # settled meanwhile
            slot = self._engines.get(run.engine_id) if run.engine_id is not None else None
            actions = run.handle(Event.CANCEL)
            if actions[:1] == (Action.DEQUEUE,):  # in the same hold: never dispatched now
                self._apply(run, actions[:1], slot, run.attempt)
                actions = actions[1:]
        # The run first, then its children: a child cancelled first would end its parent's
        # node with a failure (and the parent as failed) before the parent hears of the cancel.
        self._apply(run, actions, slot, run.attempt)
        for child in self._coordinator.children(run_id):
            if child.status not in _FINISHED:
                self.cancel_run(child.run_id)
        return True

    def get_subworkflow_coordinator(self) -> SubWorkflowCoordinator:
        """The coordinator of sub-workflow runs."""
        return self._coordinator

    def stop(self) -> None:
        """Stop dispatching, abandon running work (it stays in the store as running and is
        resumed by the next orchestrator on the same store), close engines and the store."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            for run in self._runs.values():
                run.handle(Event.STOP)  # (asks for nothing: it decides how they end)
            self._wakeup.notify_all()
            self._parked_wakeup.notify_all()
            slots = list(self._engines.values())
        if self.cluster is not None:
            self.cluster.stop()
        if self.replicas is not None:
            self.replicas.stop()
        self.pruner.stop()
        self._dispatcher.join(timeout=5)
        for slot in slots:
            slot.backend.close()  # (a remote one waits for a hand-over of its replies)
        # Workers see their runs end (cancelled or abandoned by close) and leave them in the
        # store as they are; wait for them before the store closes under them.
        self._pool.shutdown(wait=True)
        self._loop.drain(timeout=10)
        self._loop.stop()
        with self._lock:
            pending = list(self._runs.values())
            self._runs.clear()
        for run in pending:
            if not run.future.done():
                run.future.set_exception(
                    DagEngineError(
                        f"the orchestrator stopped before run {run.run_id} finished; the "
                        "next orchestrator on the same store resumes it"
                    )
                )
        if self.replicas is not None:  # its runs go to the others now, not in a lease
            self.replicas.release()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals: submission ------------------------------------------------------------

    def _spec(self, wv: WorkflowVersion) -> pb.WorkflowSpec | None:
        """The wire form of a workflow version; ``None`` when it has none (a DAG with Python
        closures, which only in-process engines can run)."""
        if wv.spec is None:
            return None
        key = (wv.workflow_id, str(wv.version))
        spec = self._specs.get(key)
        if spec is None:
            spec = workflow_to_proto(wv.spec)
            if wv.dag is not None:  # its functions imported here: their source is the code
                spec = with_code_identities(spec, wv.dag)
            self._specs[key] = spec
        return spec

    def _submit(
        self,
        wv: WorkflowVersion,
        inputs: dict[str, Any],
        *,
        key: str | None = None,
        timeout: float | None = None,
        parent_run_id: str = "",
        parent_node_id: str = "",
        depth: int = 0,
        run_id: str | None = None,
        durable: bool = True,
    ) -> RunHandle:
        """Queue a run. With ``durable`` (the default) it is committed to the store before
        this returns; without, it is committed with the next group, which is enough for a
        caller that waits for the run's end (that end is only reported once committed)."""
        # Inputs that are not JSON data (a lone surrogate, an integer past 64 bits, NaN...)
        # could not be stored or sent to an engine: refuse them before anything is recorded.
        check_json_data(inputs, "inputs")
        if self._stopping:
            raise DagEngineError("the orchestrator is stopped")
        if wv.dag is None:
            raise DagEngineError(
                f"{wv} cannot run: {wv.problem or 'its DAG is unavailable'}; register it again"
            )
        if wv.dag.inputs is not None:  # the workflow's inputs: schema; InputError if off
            inputs = validate_inputs(wv.dag.inputs, inputs)
        if run_id is None:
            run_id = RunRecord.new_id()
        elif not run_id or self.store.get_run(run_id) is not None:
            raise DagEngineError(f"run id {run_id!r} is empty or already taken")
        resolved = self.registry.resolve_children(wv)
        now = time.time()
        run = _Run(
            run_id=run_id,
            version=wv,
            inputs=inputs,
            key=key or wv.workflow_id,
            future=concurrent.futures.Future(),
            depth=depth,
            parent_run_id=parent_run_id,
            parent_node_id=parent_node_id,
            deadline=now + timeout if timeout is not None else None,
        )
        with self._lock:
            if run_id in self._runs:
                raise DagEngineError(f"run id {run_id!r} is empty or already taken")
            # Nothing waiting and an engine with room: the run starts from here, without
            # waking the dispatcher (a thread hand-off per run); else it joins the queue.
            slot = None
            if not self._front and not self._queue and not self._stopping:
                slot = self._choose(run)
            if slot is None:
                self._queue.put(run_id)  # raises QueueFull before anything is recorded
            record = RunRecord(
                run_id=run_id,
                workflow_id=wv.workflow_id,
                version=str(wv.version),
                status="queued" if slot is None else "running",
                inputs=inputs,
                # Started at once: created as claimed by its first attempt (no claim to write).
                attempt=0 if slot is None else 1,
                engine_id=None if slot is None else slot.engine_id,
                key=run.key,
                parent_run_id=parent_run_id or None,
                parent_node_id=parent_node_id or None,
                depth=depth,
                resolved_versions=resolved,
                created_at=now,
                started_at=None if slot is None else now,
                finished_at=None,
                error=None,
                result=None,
            )
            # Group commit: the run is written with the next burst, ahead of its claim, its
            # outputs and its end (all queued after it), so a run that was never written
            # never ran. A caller that gets a handle back (durable) waits for the commit.
            self.store.create_run_later(record)
            self._runs[run_id] = run
            # Before the dispatcher can see the run, so run.queued precedes run.started. A
            # run's own events go through publish_batch: without subscribers it builds no
            # Event object (publish returns one).
            self.events.publish_batch(
                [("run.queued", None, queued_data(wv, parent_run_id, parent_node_id))],
                workflow_id=wv.workflow_id,
                run_id=run_id,
            )
            if slot is not None:
                self._reserve(run, slot)
                actions = run.handle(Event.ADMITTED, engine_id=slot.engine_id)
            else:
                run.handle(Event.SUBMITTED)
                self._wakeup.notify_all()
        if slot is not None:
            self._apply(run, actions, slot, run.attempt)
        if durable:
            self.store.flush()
        return RunHandle(self, run_id, run.future, record)

    def recover(self) -> None:
        """Resume the runs a previous orchestrator on this store left queued or running.

        The constructor calls it unless given ``recover=False``: a server whose workflows
        import modules from folders it has still to put on ``sys.path`` (``dagengine serve
        --workflows``) calls it once they are in place. A run whose workflow version cannot
        be built (its import paths do not resolve) is not failed: it waits, reported by a
        ``run.resume_waiting`` event and the log, and is tried again with backoff (from
        :data:`~.recovery.RESUME_RETRY_INITIAL` to :data:`~.recovery.RESUME_RETRY_MAX`
        seconds) and whenever a workflow is registered; it can be cancelled meanwhile. Only
        the first call does anything (:mod:`.recovery`)."""
        if self.replicas is not None:  # the runs whose lease ran out, and from then on
            self.replicas.start()
        else:
            self._recovery.recover()

    # -- internals: dispatch --------------------------------------------------------------

    def _next_run_id(self) -> str | None:
        if self._front:
            return self._front[0]
        return self._queue.peek()

    def _choose(self, run: _Run) -> EngineSlot | None:
        """The engine to start ``run`` on, or ``None`` (the run waits). A replica that
        could not renew its leases starts nothing (:meth:`ReplicaCoordinator.holds_leases`)."""
        if self.replicas is not None and not self.replicas.holds_leases():
            return None
        # A workflow without a portable spec (Python closures) runs in-process only.
        return self._engine_set.choose(
            run.key, depth=run.depth, local_only=run.version.spec is None
        )

    def _next_dispatch(self) -> tuple[_Run, EngineSlot, tuple[Action, ...]] | None:
        """The run at the head of the queue, the engine to run it on, both reserved, and
        what its lifecycle asks for; ``None`` once stopping. Waits while nothing is queued or
        every engine is full. Called with the lock held."""
        while not self._stopping:
            run_id = self._next_run_id()
            run = self._runs.get(run_id) if run_id is not None else None
            if run_id is not None and (run is None or run.state not in _DISPATCHABLE):
                # Settled while queued (cancelled): drop it.
                self._pop(run_id)
                continue
            slot = self._choose(run) if run is not None else None
            if run is not None and slot is not None:
                self._pop(run.run_id)
                self._reserve(run, slot)
                return run, slot, run.handle(Event.CHOSEN, engine_id=slot.engine_id)
            # Also wakes up to retry an engine that said it was full (see _BUSY_BACKOFF).
            self._wakeup.wait(timeout=_BUSY_BACKOFF)
        return None

    def _reserve(self, run: _Run, slot: EngineSlot) -> None:
        """Count the run on the engine it goes to. Called with the lock held."""
        slot.active += 1
        slot.runs.add(run.run_id)

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                chosen = self._next_dispatch()
            if chosen is None:
                return
            run, slot, actions = chosen
            try:
                self._apply(run, actions, slot, run.attempt)
            except Exception:
                # Whatever one run's dispatch raised, the dispatcher goes on: were it to die,
                # every run queued after it would wait forever, with nothing logged.
                log.exception("dispatching run %s to %s failed", run.run_id, slot.engine_id)

    def _pop(self, run_id: str) -> None:
        if self._front and self._front[0] == run_id:
            self._front.popleft()
        else:
            self._queue.remove(run_id)

    # -- internals: running ---------------------------------------------------------------

    def _release(self, run: _Run, slot: EngineSlot) -> None:
        with self._lock:
            slot.active -= 1
            slot.runs.discard(run.run_id)
            if self._front or self._queue:  # the dispatcher only waits for room when runs wait
                self._wakeup.notify_all()

    def _apply(
        self,
        run: _Run,
        actions: tuple[Action, ...],
        slot: EngineSlot | None,
        attempt: int,
        *,
        result: RunResult | None = None,
        result_json: str | None = None,
        reason: str = "",
    ) -> None:
        """Carry out, in order, what a run's lifecycle asked for. ``slot``: the engine of the
        attempt ``attempt`` the event was about (``None`` for a run without one);
        ``result``: the attempt's result; ``reason``: why it is re-dispatched or waits."""
        lost_on: str | None = None  # the engine a cancelled run's end is published with
        for action in actions:
            if action is Action.LAUNCH:
                assert slot is not None
                if isinstance(slot.backend, RemoteBackend):
                    # Sent from this thread: a remote run needs no thread of its own, and
                    # its replies come on the core's dagengine-io thread.
                    launch_remote(self, run, slot, attempt)
                elif run.version.dag is not None and native_only(run.version.dag):
                    # Lua and no-op nodes only: started here, where a short run also ends
                    # (no thread hand-off at all). Not on an event loop's thread (the HTTP
                    # API's): it serves every request, and the run's bookkeeping there cost
                    # the sync trigger ~10% of its throughput (0.88x in a 3-round A/B); a
                    # pool thread launches it there, its events recorded in one batch.
                    if _on_event_loop():
                        self._pool.submit(launch_local, self, run, slot, attempt)
                    else:
                        launch_local(self, run, slot, attempt)
                else:
                    self._pool.submit(run_in_process, self, run, slot, attempt)
            elif action is Action.RELEASE:
                assert slot is not None
                self._release(run, slot)
            elif action is Action.SETTLE:
                assert slot is not None
                assert result is not None
                self._settle(run, attempt, result, slot.engine_id, result_json)
            elif action is Action.CLAIM:
                # This orchestrator owns the store and numbers the attempts: the claim is
                # committed with the next group, ahead of the attempt's outputs and end,
                # which are fenced on it.
                assert slot is not None
                self.store.claim_attempt_later(run.run_id, slot.engine_id, attempt)
            elif action is Action.ANNOUNCE:
                assert slot is not None
                self.events.publish_batch(
                    [("run.started", None, {"attempt": attempt})],
                    workflow_id=run.version.workflow_id,
                    run_id=run.run_id,
                    engine_id=slot.engine_id,
                )
            elif action is Action.SETTLE_CANCELLED:
                self._settle(run, attempt, cancelled_result(run.run_id), lost_on)
            elif action is Action.CANCEL_ON_ENGINE:
                if slot is not None:
                    slot.backend.cancel(run.run_id)
            elif action is Action.DEQUEUE:
                with self._lock:
                    self._queue.remove(run.run_id)
                    if run.run_id in self._front:
                        self._front.remove(run.run_id)
            elif action is Action.MARK_FULL:
                assert slot is not None
                with self._lock:
                    slot.full_until = time.monotonic() + _BUSY_BACKOFF
            elif action is Action.REQUEUE:
                with self._lock:
                    self._front.appendleft(run.run_id)
                    self._wakeup.notify_all()
            elif action is Action.ENGINE_LOST:
                assert slot is not None
                lost_on = slot.engine_id
                self._engine_set.engine_lost(slot, reason)
            elif action is Action.REDISPATCH:
                self.events.publish(
                    "run.redispatched",
                    workflow_id=run.version.workflow_id,
                    run_id=run.run_id,
                    engine_id=slot.engine_id if slot is not None else None,
                    data={"reason": reason, "previous_attempt": attempt},
                )
                with self._lock:
                    self._front.append(run.run_id)
                    self._wakeup.notify_all()
            elif action is Action.PARK:
                wv = run.version
                log.warning(
                    "run %s of %s@%s waits to resume: %s",
                    run.run_id,
                    wv.workflow_id,
                    wv.version,
                    reason,
                )
                self.events.publish(
                    "run.resume_waiting",
                    workflow_id=wv.workflow_id,
                    run_id=run.run_id,
                    data={"problem": reason, "previous_attempt": attempt},
                )
                with self._lock:
                    self._parked[run.run_id] = reason

    def _settle(
        self,
        run: _Run,
        attempt: int,
        result: RunResult,
        engine_id: str | None,
        result_json: str | None = None,
    ) -> None:
        """Record a run's end, fenced by ``attempt``, then tell its waiters (:func:`.runs.
        settle_run`)."""
        settle_run(self, run, attempt, result, engine_id, result_json)
