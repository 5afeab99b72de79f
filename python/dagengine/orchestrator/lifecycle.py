"""A run's life in the orchestrator, as a state machine without I/O.

Like the core's scheduler (``dagengine-core::scheduler``: events in, instructions out), it
holds no threads, store, engines or clocks: :meth:`RunLifecycle.handle` takes an
:class:`Event` and returns the :class:`Action` s the orchestrator (the shell) carries out —
claim an attempt, launch it, release its engine slot, re-dispatch, settle, publish. Every
move is a row of :data:`TRANSITIONS`, and the tests drive each row.

::

    NEW ─SUBMITTED─► QUEUED ─CHOSEN─► DISPATCHED ─LAUNCHING─► RUNNING ─SUCCEEDED/FAILED─► FINISHED
     ├─ADMITTED (an engine at once) ───────┘                      │
     ├─RECOVERED─► FAILING_OVER ◄─LOST/DRAINED────────────────────┤ (then CHOSEN: attempt + 1)
     └─PARKED─► WAITING ─BUILT─┘           QUEUED ◄─BUSY──────────┘

* **Attempts and fencing.** Each dispatch (``CHOSEN``, ``ADMITTED``) numbers a new attempt;
  the end of an attempt (``SUCCEEDED``, ``FAILED``, ``BUSY``, ``LOST``, ``DRAINED``) carries
  its number, and the end of any other attempt than the current one changes nothing: it only
  gives back the engine slot that attempt held (``RELEASE``). The store fences the same way.
* **Cancel** is a request (``cancel_requested``): a run that waits ends at once; a run on an
  engine is cancelled there and ends with its attempt (or at its launch, if it had not been
  sent yet).
* **Stop**: a run that waits, or whose attempt ends badly while the orchestrator stops
  (its engine closed under it), is ``LEFT``: it stays unfinished in the store for the next
  orchestrator to resume.
* ``FINISHED`` and ``LEFT`` are final: every event there is ignored.

A step is a dictionary look-up and a few attribute writes: the actions are constant tuples
and their arguments (attempt, engine) are the run's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "ATTEMPT_ENDS",
    "STALE",
    "TRANSITIONS",
    "Action",
    "Event",
    "Guard",
    "RunLifecycle",
    "State",
    "Transition",
]


class State(IntEnum):
    """Where a run is."""

    NEW = 0
    #: In the dispatch queue: new, or given back by an engine that was full.
    QUEUED = 1
    #: Parked: a stored run whose workflow version does not build yet.
    WAITING = 2
    #: An engine is chosen and counted for it, its attempt numbered; not sent yet.
    DISPATCHED = 3
    #: Sent to its engine.
    RUNNING = 4
    #: Lost its engine (or resumed after a restart): at the front of the queue, with the
    #: outputs of its completed nodes, for another attempt.
    FAILING_OVER = 5
    #: Ended: its result is settled.
    FINISHED = 6
    #: Left unfinished for the next orchestrator on the store (this one stopped).
    LEFT = 7


class Event(IntEnum):
    """What happens to a run."""

    #: Submitted; it waits for an engine.
    SUBMITTED = 0
    #: Submitted with an engine chosen at once (its first attempt recorded with the run).
    ADMITTED = 1
    #: A stored unfinished run, resumed by a new orchestrator.
    RECOVERED = 2
    #: A stored unfinished run whose workflow version does not build yet.
    PARKED = 3
    #: The waiting run's version builds now.
    BUILT = 4
    #: The dispatcher chose an engine for it (``engine_id``).
    CHOSEN = 5
    #: Its attempt is about to be sent to the engine ("launch started").
    LAUNCHING = 6
    #: Attempt ``n`` ended with a result that succeeded.
    SUCCEEDED = 7
    #: Attempt ``n`` ended otherwise: failed, cancelled, or its backend raised.
    FAILED = 8
    #: Attempt ``n`` was refused: the engine is full.
    BUSY = 9
    #: Attempt ``n`` lost its engine: the stream broke, it is unreachable or was evicted.
    LOST = 10
    #: Attempt ``n`` was handed back by a draining engine.
    DRAINED = 11
    #: Cancel requested.
    CANCEL = 12
    #: The orchestrator stops.
    STOP = 13


class Action(IntEnum):
    """What the orchestrator does for a run; the arguments are the run's fields."""

    #: Record the attempt (``attempt``, ``engine_id``) as the run's (the store's fence).
    CLAIM = 0
    #: Publish ``run.started`` for the attempt.
    ANNOUNCE = 1
    #: Send the attempt to its engine.
    LAUNCH = 2
    #: Give back the engine slot the ended attempt held.
    RELEASE = 3
    #: The engine counts as full for a moment.
    MARK_FULL = 4
    #: Back to the head of the queue.
    REQUEUE = 5
    #: Presume the attempt's engine dead: unhealthy, its other runs abandoned.
    ENGINE_LOST = 6
    #: Publish ``run.redispatched``; to the front of the queue, behind runs already there.
    REDISPATCH = 7
    #: Take it out of the queue.
    DEQUEUE = 8
    #: Ask its engine to cancel it.
    CANCEL_ON_ENGINE = 9
    #: Record its end with the attempt's result, publish it, tell its waiters.
    SETTLE = 10
    #: The same, as cancelled.
    SETTLE_CANCELLED = 11
    #: Publish ``run.resume_waiting``; wait for its version to build.
    PARK = 12


class Guard(IntEnum):
    """When a row applies (the first row of a state and event whose guard holds wins)."""

    ANY = 0
    #: Its cancel was requested.
    CANCELLED = 1
    #: The orchestrator stops and no cancel was requested.
    STOPPING = 2


@dataclass(frozen=True, slots=True)
class Transition:
    """A row of :data:`TRANSITIONS`."""

    source: State
    event: Event
    guard: Guard
    target: State
    actions: tuple[Action, ...]


_S, _E, _A, _G = State, Event, Action, Guard
_T = Transition

#: Every move a run makes, in one table (rows of a state and event in the order tried).
TRANSITIONS: Final[tuple[Transition, ...]] = (
    _T(_S.NEW, _E.SUBMITTED, _G.ANY, _S.QUEUED, ()),
    _T(_S.NEW, _E.ADMITTED, _G.ANY, _S.DISPATCHED, (_A.ANNOUNCE, _A.LAUNCH)),
    _T(_S.NEW, _E.RECOVERED, _G.ANY, _S.FAILING_OVER, (_A.REDISPATCH,)),
    _T(_S.NEW, _E.PARKED, _G.ANY, _S.WAITING, (_A.PARK,)),
    _T(_S.QUEUED, _E.CHOSEN, _G.ANY, _S.DISPATCHED, (_A.CLAIM, _A.ANNOUNCE, _A.LAUNCH)),
    _T(_S.QUEUED, _E.CANCEL, _G.ANY, _S.FINISHED, (_A.DEQUEUE, _A.SETTLE_CANCELLED)),
    _T(_S.QUEUED, _E.STOP, _G.ANY, _S.LEFT, ()),
    _T(_S.FAILING_OVER, _E.CHOSEN, _G.ANY, _S.DISPATCHED, (_A.CLAIM, _A.ANNOUNCE, _A.LAUNCH)),
    _T(_S.FAILING_OVER, _E.CANCEL, _G.ANY, _S.FINISHED, (_A.DEQUEUE, _A.SETTLE_CANCELLED)),
    _T(_S.FAILING_OVER, _E.STOP, _G.ANY, _S.LEFT, ()),
    _T(_S.WAITING, _E.BUILT, _G.ANY, _S.FAILING_OVER, (_A.REDISPATCH,)),
    _T(_S.WAITING, _E.CANCEL, _G.ANY, _S.FINISHED, (_A.SETTLE_CANCELLED,)),
    _T(_S.WAITING, _E.STOP, _G.ANY, _S.LEFT, ()),
    # Cancelled or stopped between its dispatch and its launch: the engine never heard of
    # it (its cancel went nowhere).
    _T(_S.DISPATCHED, _E.LAUNCHING, _G.CANCELLED, _S.FINISHED, (_A.RELEASE, _A.SETTLE_CANCELLED)),
    _T(_S.DISPATCHED, _E.LAUNCHING, _G.STOPPING, _S.LEFT, (_A.RELEASE,)),
    _T(_S.DISPATCHED, _E.LAUNCHING, _G.ANY, _S.RUNNING, ()),
    _T(_S.DISPATCHED, _E.CANCEL, _G.ANY, _S.DISPATCHED, (_A.CANCEL_ON_ENGINE,)),
    _T(_S.DISPATCHED, _E.STOP, _G.ANY, _S.DISPATCHED, ()),
    _T(_S.RUNNING, _E.SUCCEEDED, _G.ANY, _S.FINISHED, (_A.RELEASE, _A.SETTLE)),
    # Ended by stop() (closed engines: cancelled, or failed on the way, like a sub-workflow
    # node whose wait was cut): resumed by the next orchestrator with its stored outputs.
    _T(_S.RUNNING, _E.FAILED, _G.STOPPING, _S.LEFT, (_A.RELEASE,)),
    _T(_S.RUNNING, _E.FAILED, _G.ANY, _S.FINISHED, (_A.RELEASE, _A.SETTLE)),
    # Full with runs we do not count (from before it re-registered, or being cancelled): not
    # a failure of the run.
    _T(
        _S.RUNNING,
        _E.BUSY,
        _G.CANCELLED,
        _S.FINISHED,
        (_A.MARK_FULL, _A.RELEASE, _A.SETTLE_CANCELLED),
    ),
    _T(_S.RUNNING, _E.BUSY, _G.ANY, _S.QUEUED, (_A.MARK_FULL, _A.RELEASE, _A.REQUEUE)),
    _T(_S.RUNNING, _E.LOST, _G.STOPPING, _S.LEFT, (_A.RELEASE,)),
    _T(
        _S.RUNNING,
        _E.LOST,
        _G.CANCELLED,
        _S.FINISHED,
        (_A.RELEASE, _A.ENGINE_LOST, _A.SETTLE_CANCELLED),
    ),
    _T(
        _S.RUNNING,
        _E.LOST,
        _G.ANY,
        _S.FAILING_OVER,
        (_A.RELEASE, _A.ENGINE_LOST, _A.REDISPATCH),
    ),
    # A drained run the caller cancelled ends with what the engine said.
    _T(_S.RUNNING, _E.DRAINED, _G.CANCELLED, _S.FINISHED, (_A.RELEASE, _A.SETTLE)),
    _T(_S.RUNNING, _E.DRAINED, _G.STOPPING, _S.LEFT, (_A.RELEASE,)),
    _T(_S.RUNNING, _E.DRAINED, _G.ANY, _S.FAILING_OVER, (_A.RELEASE, _A.REDISPATCH)),
    _T(_S.RUNNING, _E.CANCEL, _G.ANY, _S.RUNNING, (_A.CANCEL_ON_ENGINE,)),
    _T(_S.RUNNING, _E.STOP, _G.ANY, _S.RUNNING, ()),
)

#: Events that end an attempt: they carry its number and are fenced on it.
ATTEMPT_ENDS: Final = frozenset({_E.SUCCEEDED, _E.FAILED, _E.BUSY, _E.LOST, _E.DRAINED})
#: What the end of an attempt other than the current one does: give its slot back.
STALE: Final[tuple[Action, ...]] = (_A.RELEASE,)
_NONE: Final[tuple[Action, ...]] = ()

# The table by ``state * _KEY + event`` (ints: an enum member hashes in Python, slowly).
_KEY: Final = 16
_ROWS: dict[int, tuple[tuple[Guard, State, tuple[Action, ...]], ...]] = {}
for _row in TRANSITIONS:
    _k = _row.source * _KEY + _row.event
    _ROWS[_k] = (*_ROWS.get(_k, ()), (_row.guard, _row.target, _row.actions))
_FIRST_END: Final = int(min(ATTEMPT_ENDS))
_LAST_END: Final = int(max(ATTEMPT_ENDS))
assert {*range(_FIRST_END, _LAST_END + 1)} == {int(e) for e in ATTEMPT_ENDS}


@dataclass(slots=True, kw_only=True)
class RunLifecycle:
    """A run's state: where it is, its current attempt and engine, and the requests it got.

    :meth:`handle` is the only thing that changes it (the shell that owns a run calls it
    under its lock)."""

    state: State = State.NEW
    #: The current attempt's number (0: none yet).
    attempt: int = 0
    #: The engine the current attempt holds a slot on (while ``DISPATCHED`` or ``RUNNING``).
    engine_id: str | None = None
    cancel_requested: bool = False
    stopping: bool = False

    def handle(
        self, event: Event, attempt: int = 0, engine_id: str | None = None
    ) -> tuple[Action, ...]:
        """Take ``event`` (``attempt``: the attempt an attempt's end is of; ``engine_id``:
        the engine ``CHOSEN``/``ADMITTED`` chose) and return what to do. An event the
        state has no row for changes nothing and asks for nothing."""
        if _FIRST_END <= event <= _LAST_END and attempt != self.attempt:
            # Fencing: the end of an older attempt (its engine came back) is not this run's.
            return STALE if attempt else _NONE
        state = self.state
        if event >= _CANCEL:  # CANCEL or STOP: a request, kept until the run is over
            if state >= _FINISHED:
                return _NONE
            if event == _CANCEL:
                self.cancel_requested = True
            else:
                self.stopping = True
        rows = _ROWS.get(state * _KEY + event)
        if rows is None:
            return _NONE
        for guard, target, actions in rows:  # noqa: B007 (the row found is used below)
            if (
                guard is _ANY
                or (guard is _IF_CANCELLED and self.cancel_requested)
                or (guard is _IF_STOPPING and self.stopping and not self.cancel_requested)
            ):
                break
        else:  # no row's guard holds (the table ends each list with ANY: not reached)
            return _NONE
        if event is _CHOSEN or event is _ADMITTED:
            self.attempt += 1
            self.engine_id = engine_id
        elif target is not _DISPATCHED and target is not _RUNNING:
            self.engine_id = None
        self.state = target
        return actions


# The members handle() compares with, as module globals (a class attribute look-up on an
# enum costs more than the rest of a step).
_CANCEL: Final = Event.CANCEL
_CHOSEN: Final = Event.CHOSEN
_ADMITTED: Final = Event.ADMITTED
_FINISHED: Final = State.FINISHED
_DISPATCHED: Final = State.DISPATCHED
_RUNNING: Final = State.RUNNING
_ANY: Final = Guard.ANY
_IF_CANCELLED: Final = Guard.CANCELLED
_IF_STOPPING: Final = Guard.STOPPING
assert Event.STOP == _CANCEL + 1 == len(Event) - 1
assert State.LEFT == _FINISHED + 1 == len(State) - 1
