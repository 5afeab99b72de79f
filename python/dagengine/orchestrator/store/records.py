"""The store's records (runs, events, workflow versions), run statuses and event
severities, and the JSON encoding every write goes through. Independent of the database:
a backend of :class:`~dagengine.orchestrator.store.protocol.StoreBackend` returns these
records and encodes with :func:`_dumps`."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from dagengine._jsondata import compact_json

__all__ = [
    "FINISHED_STATUSES",
    "RUN_STATUSES",
    "SEVERITIES",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "Severity",
    "WorkflowVersionRecord",
]

RunStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Severity: TypeAlias = Literal["info", "warning", "error", "critical"]

RUN_STATUSES: Final = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES: Final = ("succeeded", "failed", "cancelled")
#: Event severities, least severe first; ``min_severity`` filters by this order.
SEVERITIES: Final[tuple[Severity, ...]] = ("info", "warning", "error", "critical")
_SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}


#: Every write's JSON encoding: compact, non-ASCII kept, NaN allowed.
_dumps: Final = compact_json


def _encodable(value: Any) -> Any:
    """``value`` with text that UTF-8 can encode: lone surrogates become ``\\uXXXX``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowVersionRecord:
    """A registered workflow version as stored. ``spec`` is ``None`` for a DAG that has no
    portable spec (Python closures): it is listed after a restart but must be registered again
    to run. ``dependencies`` are the ``(workflow_id, version_range)`` of its sub-workflow
    nodes."""

    workflow_id: str
    version: str
    spec: dict[str, Any] | None
    metadata: dict[str, Any]
    dependencies: tuple[tuple[str, str], ...]
    registered_at: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a workflow version. ``attempt`` counts dispatches to engines (0 = never
    dispatched); ``resolved_versions`` maps each sub-workflow reference (``child@^1``) to the
    version chosen at run start; times are Unix seconds."""

    run_id: str
    workflow_id: str
    version: str
    status: RunStatus = "queued"
    inputs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    engine_id: str | None = None
    key: str | None = None
    parent_run_id: str | None = None
    parent_node_id: str | None = None
    depth: int = 0
    resolved_versions: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @staticmethod
    def new_id() -> str:
        """A fresh run id: 32 hex digits, the first 12 the creation time in milliseconds
        and the rest random (80 bits), like a UUIDv7. Ids made later sort later, so the
        indexes keyed by run id (runs, node outputs, events by run) grow at their end: with
        random ids each insert landed on a random page of them, which made recording an
        event three times as expensive.

        The random part comes from :mod:`random` (reseeded in a forked child), not from
        ``os.urandom``: that is a system call with the GIL let go, and taking the GIL back
        from 64 busy threads cost the caller a context switch per run. Run ids are unique,
        not secret."""
        return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"

    @property
    def finished(self) -> bool:
        """True once the run succeeded, failed or was cancelled."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event; ``seq`` increases with every event and is never reused."""

    seq: int
    time: float
    type: str
    severity: Severity
    workflow_id: str | None
    run_id: str | None
    node_id: str | None
    engine_id: str | None
    data: dict[str, Any]


def _check_status(status: str, allowed: Iterable[str] = RUN_STATUSES) -> None:
    allowed = tuple(allowed)
    if status not in allowed:
        raise ValueError(f"invalid run status {status!r}: expected one of {', '.join(allowed)}")


def _severity_rank(severity: str) -> int:
    try:
        return _SEVERITY_RANK[severity]
    except KeyError:
        raise ValueError(
            f"invalid severity {severity!r}: expected one of {', '.join(SEVERITIES)}"
        ) from None
