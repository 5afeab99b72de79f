"""The trigger interface (as in the original system) and what triggers need of an executor.

A trigger starts workflow runs when something happens (a time comes, a request arrives). It
is given an *executor* when started — normally the :class:`~dagengine.orchestrator.
Orchestrator`, but anything with ``execute_workflow(workflow_id, inputs, version=None,
wait=False)`` works — and every run it starts carries three extra inputs, as the original
system's did: ``_trigger_type`` (``cron``, ``http``), ``_trigger_id`` and ``_trigger_time``
(ISO 8601, UTC).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

from dagengine.exceptions import TriggerError

__all__ = [
    "Executor",
    "RunLike",
    "Trigger",
    "format_trigger_time",
    "publish_trigger_event",
    "trigger_inputs",
]

log = logging.getLogger("dagengine.triggers")

#: Called with no arguments at each fire; returns extra run inputs (the original system's
#: ``InputsBuilder``).
InputsBuilder = Callable[[], Mapping[str, Any]]


@runtime_checkable
class RunLike(Protocol):
    """What a trigger needs of a submitted run (:class:`~dagengine.orchestrator.RunHandle`)."""

    run_id: str

    @property
    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def cancel(self) -> bool: ...


class Executor(Protocol):
    """What a trigger needs to start runs (the orchestrator is one)."""

    def execute_workflow(
        self,
        workflow_id: str,
        inputs: Mapping[str, Any] | None = None,
        version: str | None = None,
        wait: bool = True,
    ) -> Any: ...


def format_trigger_time(when: float) -> str:
    """``when`` (unix seconds) as ISO 8601 UTC: ``2024-03-10T07:00:00Z``, with milliseconds
    when it is not a whole second."""
    moment = datetime.fromtimestamp(when, timezone.utc)
    spec = "seconds" if float(when).is_integer() else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def trigger_inputs(
    base: Mapping[str, Any], trigger_type: str, trigger_id: str, when: float
) -> dict[str, Any]:
    """The inputs of a triggered run: ``base`` plus the three ``_trigger_*`` inputs (which
    win over keys of the same name in ``base``)."""
    return {
        **base,
        "_trigger_type": trigger_type,
        "_trigger_id": trigger_id,
        "_trigger_time": format_trigger_time(when),
    }


def publish_trigger_event(
    executor: object,
    trigger: Trigger,
    workflow_id: str,
    *,
    outcome: str,
    scheduled: float,
    run_id: str | None = None,
    error: str | None = None,
) -> None:
    """Record a ``trigger.fired`` event on the executor's event bus, if it has one (the
    orchestrator does), so a trigger's fires, skips and failures show up in the monitor."""
    bus = getattr(executor, "events", None)
    publish = getattr(bus, "publish", None)
    if publish is None:
        return
    data: dict[str, Any] = {
        "trigger_id": trigger.id,
        "trigger_type": trigger.type,
        "outcome": outcome,
        "time": format_trigger_time(scheduled),
    }
    if error is not None:
        data["error"] = error
    try:
        publish(
            "trigger.fired",
            severity="error" if outcome == "error" else None,
            workflow_id=workflow_id,
            run_id=run_id,
            data=data,
        )
    except Exception:  # monitoring must never break firing
        log.exception("trigger %s: could not publish its event", trigger.id)


class Trigger(abc.ABC):
    """A source of runs. ``id`` and ``type`` name it; :meth:`start` hands it the executor it
    fires through and raises :class:`~dagengine.TriggerError` when it cannot start (it never
    logs and carries on); :meth:`stop` stops it; ``start`` after ``stop`` works."""

    #: ``cron``, ``http``, ...
    type: str = ""

    def __init__(self, trigger_id: str) -> None:
        if not isinstance(trigger_id, str) or not trigger_id.strip():
            raise TriggerError("a trigger needs a non-empty id", trigger_id=str(trigger_id))
        self._id = trigger_id
        self._lock = threading.RLock()
        self._executor: Executor | None = None
        self._active = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def is_active(self) -> bool:
        """Whether the trigger is started (and not stopped since)."""
        with self._lock:
            return self._active

    @property
    def executor(self) -> Executor | None:
        """The executor given to :meth:`start` (``None`` before)."""
        return self._executor

    def start(self, executor: Executor) -> None:
        """Start firing runs through ``executor``. Raises :class:`TriggerError` if the
        trigger is already active or cannot start."""
        with self._lock:
            if self._active:
                raise TriggerError(f"trigger {self.id!r} is already started", trigger_id=self.id)
            self._executor = executor
            self._start(executor)
            self._active = True

    def stop(self) -> None:
        """Stop firing. Runs already started go on. Stopping a stopped trigger does nothing."""
        with self._lock:
            if not self._active:
                return
            self._active = False
            self._stop()

    @abc.abstractmethod
    def _start(self, executor: Executor) -> None:
        """Acquire what the trigger needs; raise :class:`TriggerError` on failure."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Release it."""

    def __repr__(self) -> str:
        state = "active" if self.is_active else "stopped"
        return f"<{type(self).__name__} {self.id!r} {state}>"
