"""The orchestrator's event vocabulary: :class:`Severity`, :class:`EventType` and each type's
default severity, the :class:`Event` record, :class:`EventFilter` (what a subscription wants)
and :class:`EventStore` (what the bus needs of the store). The bus that persists and fans
events out, and the table of types with the reasons for their severities, are in
:mod:`dagengine.orchestrator.events`, which re-exports all of these."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

__all__ = [
    "DEFAULT_SEVERITY",
    "SEVERITY_ORDER",
    "TYPE_DEFAULTS",
    "Event",
    "EventFilter",
    "EventStore",
    "EventType",
    "Severity",
    "event_type_of",
    "severity_of",
]


class Severity(str, Enum):
    """How bad an event is; ordered ``info < warning < error < critical``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for ``info`` up to 3 for ``critical``."""
        return SEVERITY_ORDER[self.value]


#: Severity name -> rank, for comparisons on plain strings read back from the store.
SEVERITY_ORDER: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}


class EventType(str, Enum):
    """Every event type the orchestrator publishes (the value is the wire/store name)."""

    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_REDISPATCHED = "run.redispatched"
    RUN_RESUME_WAITING = "run.resume_waiting"
    NODE_STARTED = "node.started"
    NODE_SUCCEEDED = "node.succeeded"
    NODE_FAILED = "node.failed"
    NODE_RETRYING = "node.retrying"
    NODE_SKIPPED = "node.skipped"
    NODE_MAPPED = "node.mapped"
    NODE_CACHED = "node.cached"
    NODE_CANCELLED = "node.cancelled"
    NODE_LOG = "node.log"
    ENGINE_JOINED = "engine.joined"
    ENGINE_LEFT = "engine.left"
    ENGINE_UNHEALTHY = "engine.unhealthy"
    ENGINE_RECOVERED = "engine.recovered"
    TRIGGER_FIRED = "trigger.fired"
    STORE_PRUNED = "store.pruned"


#: The severity an event type gets unless ``publish`` names another (see :mod:`.events`).
DEFAULT_SEVERITY: dict[EventType, Severity] = {
    EventType.RUN_QUEUED: Severity.INFO,
    EventType.RUN_STARTED: Severity.INFO,
    EventType.RUN_COMPLETED: Severity.INFO,
    EventType.RUN_FAILED: Severity.ERROR,
    EventType.RUN_CANCELLED: Severity.WARNING,
    EventType.RUN_REDISPATCHED: Severity.WARNING,
    EventType.RUN_RESUME_WAITING: Severity.WARNING,
    EventType.NODE_STARTED: Severity.INFO,
    EventType.NODE_SUCCEEDED: Severity.INFO,
    EventType.NODE_FAILED: Severity.ERROR,
    EventType.NODE_RETRYING: Severity.WARNING,
    EventType.NODE_SKIPPED: Severity.INFO,
    EventType.NODE_MAPPED: Severity.INFO,
    EventType.NODE_CACHED: Severity.INFO,
    EventType.NODE_CANCELLED: Severity.INFO,
    EventType.NODE_LOG: Severity.INFO,
    EventType.ENGINE_JOINED: Severity.INFO,
    EventType.ENGINE_LEFT: Severity.WARNING,
    EventType.ENGINE_UNHEALTHY: Severity.WARNING,
    EventType.ENGINE_RECOVERED: Severity.INFO,
    EventType.TRIGGER_FIRED: Severity.INFO,
    EventType.STORE_PRUNED: Severity.INFO,
}


def severity_of(value: Severity | str) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        raise ValueError(
            f"unknown severity {value!r}; expected one of {', '.join(SEVERITY_ORDER)}"
        ) from None


def event_type_of(value: EventType | str) -> EventType:
    try:
        return EventType(value)
    except ValueError:
        raise ValueError(f"unknown event type {value!r}") from None


#: type name -> (type name, default severity name): ``publish`` is on every run's hot path, and
#: enum construction and ``.value`` lookups cost more than the rest of it.
TYPE_DEFAULTS: dict[str, tuple[str, str]] = {
    kind.value: (kind.value, level.value) for kind, level in DEFAULT_SEVERITY.items()
}


@dataclass(frozen=True, slots=True)
class Event:
    """One orchestrator event. ``seq`` is its position in the store (strictly increasing);
    ``time`` a unix timestamp; ``type`` and ``severity`` are the plain string values of
    :class:`EventType` / :class:`Severity` (so events read back from an older store still
    load); ``data`` is a JSON-ready dict, to be treated as read-only."""

    seq: int
    time: float
    type: str
    severity: str
    workflow_id: str | None = None
    run_id: str | None = None
    node_id: str | None = None
    engine_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Any) -> Event:
        """Build from a store record (anything with the same attribute names; ``data`` may
        be a dict or its JSON text)."""
        data = record.data
        if isinstance(data, str | bytes):
            data = json.loads(data) if data else {}
        return cls(
            seq=int(record.seq),
            time=float(record.time),
            type=str(record.type),
            severity=str(record.severity),
            workflow_id=record.workflow_id,
            run_id=record.run_id,
            node_id=record.node_id,
            engine_id=record.engine_id,
            data=dict(data) if data is not None else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event."""
        return {
            "seq": self.seq,
            "time": self.time,
            "type": self.type,
            "severity": self.severity,
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "node_id": self.node_id,
            "engine_id": self.engine_id,
            "data": dict(self.data),
        }


class EventStore(Protocol):
    """What the bus needs of the store (:class:`dagengine.orchestrator.store.Store`). When
    the store also has ``transaction()`` (a context manager) and ``last_event_seq()``, the bus
    uses them (lock order, and the sequence of a store with history)."""

    def append_event(
        self,
        time: float,
        type: str,
        severity: str,
        workflow_id: str | None,
        run_id: str | None,
        node_id: str | None,
        engine_id: str | None,
        data: Mapping[str, Any] | None,
    ) -> int: ...

    def events(
        self,
        after: int = 0,
        workflow_id: str | None = None,
        run_id: str | None = None,
        types: Sequence[str] | None = None,
        min_severity: str | None = None,
        limit: int = 1000,
    ) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscription wants. ``None`` fields match everything; ``types`` holds
    exact type names (``"node.*"`` patterns are expanded by :meth:`create`)."""

    workflow_id: str | None = None
    run_id: str | None = None
    types: frozenset[str] | None = None
    min_severity: Severity | None = None

    @classmethod
    def create(
        cls,
        workflow_id: str | None = None,
        run_id: str | None = None,
        types: Iterable[EventType | str] | EventType | str | None = None,
        min_severity: Severity | str | None = None,
    ) -> EventFilter:
        """Validate and normalise the arguments of ``subscribe``. ``types`` takes type names,
        :class:`EventType` members, or ``"prefix.*"`` patterns (``"engine.*"``)."""
        names: frozenset[str] | None = None
        if types is not None:
            if isinstance(types, str):  # one name; a str is also an Iterable[str]
                types = [types]
            wanted: set[str] = set()
            for item in types:
                text = item.value if isinstance(item, EventType) else str(item)
                if text.endswith(".*"):
                    prefix = text[:-1]
                    matched = {t.value for t in EventType if t.value.startswith(prefix)}
                    if not matched:
                        raise ValueError(f"event type pattern {text!r} matches no event type")
                    wanted |= matched
                else:
                    wanted.add(event_type_of(text).value)
            names = frozenset(wanted)
        severity = None if min_severity is None else severity_of(min_severity)
        return cls(workflow_id, run_id, names, severity)

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes this filter."""
        if self.workflow_id is not None and event.workflow_id != self.workflow_id:
            return False
        if self.run_id is not None and event.run_id != self.run_id:
            return False
        if self.types is not None and event.type not in self.types:
            return False
        return self.min_severity is None or (
            SEVERITY_ORDER.get(event.severity, 0) >= self.min_severity.rank
        )

    def query(self, after: int, limit: int, store: EventStore) -> list[Event]:
        """Events of ``store`` after ``after`` that pass the filter, oldest first."""
        records = store.events(
            after=after,
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            types=None if self.types is None else sorted(self.types),
            min_severity=None if self.min_severity is None else self.min_severity.value,
            limit=limit,
        )
        # The store filters already; checking again keeps us correct against a store that
        # filters more loosely (e.g. ignores a filter it does not index).
        return [ev for ev in map(Event.from_record, records) if self.matches(ev)]
