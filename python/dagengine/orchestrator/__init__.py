"""The orchestrator: it decides where and what runs, and never loses a run.

* :class:`Orchestrator` — registry, dispatch, failover, sub-workflows (:mod:`.orchestrator`,
  the shell of a run's :mod:`.lifecycle`, a state machine without I/O; :mod:`.engines`,
  :mod:`.runs`, :mod:`.subworkflows`, :mod:`.recording`); :class:`Engine` is an in-process
  engine (:mod:`.backends`); the distributed side — ``OrchestratorService``, discovery,
  health checks, ``orchestrator_from_config`` — is :mod:`.cluster`.
* :mod:`.config` (the original system's environment variables), :mod:`.store` (durable state
  in SQLite), :mod:`.registry` (versioned workflows), :mod:`.balancer` (engine choice and the
  run queue), :mod:`.discovery` (static, self-registration, Kubernetes; health checks),
  :mod:`.events` and :mod:`.monitor` (typed events, subscriptions with replay).
"""

from __future__ import annotations

from dagengine.orchestrator.backends import Engine
from dagengine.orchestrator.balancer import (
    ConsistentHash,
    EngineLoad,
    LeastLoaded,
    LoadBalancer,
    RoundRobin,
    RunQueue,
    make_balancer,
)
from dagengine.orchestrator.config import Config
from dagengine.orchestrator.events import Event, EventBus, EventType, Severity, Subscription
from dagengine.orchestrator.monitor import Monitor
from dagengine.orchestrator.orchestrator import (
    Orchestrator,
    RunHandle,
    RunInfo,
    SubWorkflowCoordinator,
)
from dagengine.orchestrator.registry import (
    Dependent,
    WorkflowInfo,
    WorkflowRegistry,
    WorkflowVersion,
)
from dagengine.orchestrator.store import EventRecord, RunRecord, Store, WorkflowVersionRecord

__all__ = [
    "Config",
    "ConsistentHash",
    "Dependent",
    "Engine",
    "EngineLoad",
    "Event",
    "EventBus",
    "EventRecord",
    "EventType",
    "LeastLoaded",
    "LoadBalancer",
    "Monitor",
    "Orchestrator",
    "RoundRobin",
    "RunHandle",
    "RunInfo",
    "RunQueue",
    "RunRecord",
    "Severity",
    "Store",
    "SubWorkflowCoordinator",
    "Subscription",
    "WorkflowInfo",
    "WorkflowRegistry",
    "WorkflowVersion",
    "WorkflowVersionRecord",
    "make_balancer",
]
