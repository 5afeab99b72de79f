"""Typed orchestrator events and the bus that persists and fans them out. The types, the
:class:`Event` record and :class:`EventFilter` are defined in :mod:`._event_model` and
importable from here.

Every event is first appended to the store, which gives it its sequence number (``seq``,
strictly increasing), then handed to the live subscribers. A subscriber's cursor is therefore
a store position: whatever a subscriber did not receive live can be read back from the store.

Event types and their default severities (``publish`` may override the severity):

==================== ======== ==========================================================
type                 severity why
==================== ======== ==========================================================
``run.queued``       info     normal life of a run
``run.started``      info
``run.completed``    info
``run.failed``       error    a run ended without its result
``run.cancelled``    warning  someone stopped it; not a fault of the system
``run.redispatched`` warning  an engine was lost under the run; it goes on elsewhere
``node.started``     info
``node.succeeded``   info
``node.failed``      error    a node failed for good
``node.retrying``    warning  a node failed but will be retried
``node.skipped``     info     consequence of another node's failure, reported there
``node.mapped``      info     a mapped node was expanded into ``count`` items (``id[i]``)
``node.cached``      info     a cached node took run ``from_run``'s output, not executed
``node.cancelled``   info     consequence of a cancellation, reported on the run
``node.log``         info     a node's log line
``engine.joined``    info
``engine.left``      warning  capacity went away
``engine.unhealthy`` warning  evicted; its runs are re-dispatched
``engine.recovered`` info
``trigger.fired``    info
``store.pruned``     info     finished runs past their retention were deleted (counts)
==================== ======== ==========================================================

``run.resume_waiting`` (warning): a stored run cannot resume yet, its workflow version does
not build (an import path does not resolve); it is tried again with backoff.

``critical`` is never a default: it is for the orchestrator to raise explicitly (e.g. no
engine left at all).

The bus never blocks a publisher on a subscriber: each :class:`Subscription` has a bounded
buffer; an event that does not fit is dropped for that subscriber and counted in
:attr:`Subscription.missed`, and the subscription later reads the dropped events back from the
store, so what it delivers is always gap-free and in ``seq`` order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time as _time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from dagengine.orchestrator._event_model import (
    DEFAULT_SEVERITY,
    SEVERITY_ORDER,
    TYPE_DEFAULTS,
    Event,
    EventFilter,
    EventStore,
    EventType,
    Severity,
    event_type_of,
    severity_of,
)

__all__ = [
    "DEFAULT_SEVERITY",
    "SEVERITY_ORDER",
    "Event",
    "EventBus",
    "EventFilter",
    "EventStore",
    "EventType",
    "Follower",
    "Severity",
    "Subscription",
]

_log = logging.getLogger(__name__)


# How many events one store read fetches during replay and catch-up.
_PAGE = 500

_STORE = object()  # _take(): "read the next page from the store first"


class Subscription(Iterator[Event], AsyncIterator[Event]):
    """A stream of events for one subscriber, in ``seq`` order, without gaps or duplicates.

    Iterate it (``for ev in sub``, blocking) or ``async for ev in sub`` (never blocks the
    loop), or poll with :meth:`get`. Made by :meth:`EventBus.subscribe` /
    :meth:`dagengine.orchestrator.monitor.Monitor.subscribe`.

    - When ``after`` was given, the events after that cursor are first read from the store,
      then the subscription continues live.
    - Live events go into a buffer of ``buffer`` events. When it is full, events are dropped
      for this subscriber (never waited for) and counted in :attr:`missed`; from then on, live
      events are dropped until the subscriber has drained the buffer, at which point the
      subscription reads the dropped events back from the store and then goes live again.
      So a slow subscriber sees every event, late; :attr:`missed` says how many came late.
    - :attr:`cursor` is the ``seq`` of the last event delivered (``None`` before the first
      one for a live-only subscription): subscribing again with ``after=sub.cursor`` resumes
      exactly after it.

    Close it (or use ``with``) to stop; iteration then ends.
    """

    def __init__(
        self,
        bus: EventBus,
        filter: EventFilter,
        *,
        after: int | None = None,
        buffer: int = 1000,
    ) -> None:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        if after is not None and after < 0:
            raise ValueError("after must be a sequence number >= 0")
        self.filter = filter
        self._bus = bus
        self._capacity = buffer
        self._cond = threading.Condition()
        self._live: deque[Event] = deque()
        self._page: deque[Event] = deque()  # events read from the store, delivered first
        self._cursor = after
        self._missed = 0
        # While True, live events are dropped (a gap was opened); cleared when the buffer is
        # drained and the subscription turns to the store to fill the gap.
        self._lagging = False
        self._gap_after = 0  # used only if a gap opens before anything was delivered
        self._from_store = after is not None  # the next events come from the store
        self._store_busy = False  # one store read at a time
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: Only this orchestrator's events (see :meth:`EventBus.subscribe`).
        self.own_only = False

    # --- state ---------------------------------------------------------------------------

    @property
    def missed(self) -> int:
        """How many events were dropped from this subscriber's live buffer because it fell
        behind (they are read back from the store; see the class doc)."""
        with self._cond:
            return self._missed

    @property
    def cursor(self) -> int | None:
        """``seq`` of the last event delivered (the resume point for ``after=``)."""
        with self._cond:
            return self._cursor

    @property
    def lagging(self) -> bool:
        """Whether the subscription is behind the live stream: events were dropped and not
        read back yet, or the replay from ``after`` is not finished."""
        with self._cond:
            return self._lagging or self._from_store

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (by the subscriber or by the bus)."""
        with self._cond:
            return self._closed

    # --- the publisher side (called by the bus under its lock; must never block) ----------

    def _offer(self, event: Event) -> None:
        if not self.filter.matches(event):
            return
        with self._cond:
            if self._closed:
                return
            if self._lagging:
                # Keep what is delivered a prefix of the stream: nothing after a gap goes
                # into the buffer until the gap has been filled from the store.
                self._missed += 1
                return
            if len(self._live) >= self._capacity:
                self._lagging = True
                self._missed += 1
                self._gap_after = event.seq - 1
                return
            self._live.append(event)
            self._cond.notify()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            _wake(loop, fut)

    # --- the subscriber side ---------------------------------------------------------------

    def _take(self) -> Event | object | None:
        """Under the lock: the next event, ``_STORE`` if the store must be read first, or
        ``None`` if nothing is available now."""
        if self._page:
            event = self._page.popleft()
            self._cursor = event.seq
            return event
        if self._from_store:
            # One store read at a time; another reader waits for its page.
            return None if self._store_busy else _STORE
        while self._live:
            event = self._live.popleft()
            if self._cursor is not None and event.seq <= self._cursor:
                continue  # already delivered from the store
            self._cursor = event.seq
            return event
        if self._lagging:
            # The buffer is drained: fill the gap from the store. Live events are accepted
            # again from now on, and the ones the store also returns are skipped above, so
            # the switch back to live has neither a gap nor a duplicate.
            self._lagging = False
            self._from_store = True
            return _STORE
        return None

    def _fetch(self) -> None:
        """Read the next page from the store into ``_page`` (outside the lock: store I/O)."""
        with self._cond:
            if self._store_busy or not self._from_store:
                return
            self._store_busy = True
            start = self._cursor if self._cursor is not None else self._gap_after
        page: list[Event] | None = None
        try:
            page = self.filter.query(start, _PAGE, self._bus.store)
        finally:
            # On a store error ``page`` stays None: the subscription stays on the store (the
            # error goes to the reader, who may retry) instead of skipping the gap.
            with self._cond:
                self._store_busy = False
                if page is not None:
                    self._page.extend(page)
                    # A short page means the store has nothing more right now. Everything
                    # published since the live buffer (re)opened is in the buffer, so going
                    # live now leaves no gap (duplicates are skipped by seq).
                    if len(page) < _PAGE:
                        self._from_store = False
                self._cond.notify_all()
                waiters, self._waiters = self._waiters, []
            for loop, fut in waiters:
                _wake(loop, fut)

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (``None``: until one comes);
        ``None`` when the timeout passes or the subscription is closed."""
        deadline = None if timeout is None else _time.monotonic() + timeout
        while True:
            with self._cond:
                if self._closed:
                    return None
                item = self._take()
                if item is None:
                    remaining = None if deadline is None else deadline - _time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                    continue
            if item is _STORE:
                self._fetch()
                continue
            assert isinstance(item, Event)
            return item

    def get_many(self, limit: int) -> list[Event]:
        """Every event available now, up to ``limit``, in order, without waiting (one hold
        of the lock for what is buffered, instead of one :meth:`get` each)."""
        out: list[Event] = []
        while len(out) < limit:
            fetch = False
            with self._cond:
                if self._closed:
                    return out
                while len(out) < limit:
                    item = self._take()
                    if item is None:
                        return out
                    if item is _STORE:
                        fetch = True
                        break
                    assert isinstance(item, Event)
                    out.append(item)
            if fetch:
                self._fetch()
        return out

    def replay_missed(self) -> list[Event]:
        """Every event this subscription has not delivered yet, up to the last one published
        when called, in order: the ones still buffered and the ones it dropped (read back
        from the store). Afterwards the subscription continues live after them."""
        # Bounded by the head at call time, so a steady stream of new events cannot keep
        # this loop going (0: nothing published through this bus; then stop when dry).
        head = self._bus.last_seq
        out: list[Event] = []
        while True:
            with self._cond:
                if self._closed:
                    return out
                if head and self._cursor is not None and self._cursor >= head:
                    return out
                item = self._take()
            if item is None:
                return out
            if item is _STORE:
                self._fetch()
                continue
            assert isinstance(item, Event)
            out.append(item)

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._closed:
                    raise StopAsyncIteration
                item = self._take()
                if item is None:
                    # Register before releasing the lock, so an event offered right after
                    # cannot slip between the check and the wait.
                    fut: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, fut))
            if item is None:
                await fut
                continue
            if item is _STORE:
                await asyncio.to_thread(self._fetch)  # store I/O off the event loop
                continue
            assert isinstance(item, Event)
            return item

    def close(self) -> None:
        """Stop the subscription: iteration ends and the bus forgets it."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._live.clear()
            self._page.clear()
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            _wake(loop, fut)
        self._bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription cursor={self._cursor} missed={self._missed}>"


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    # RuntimeError: that loop is closed, and its waiter is gone with it.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set_result, fut)


class EventBus:
    """Persists events in ``store`` and fans them out to live subscriptions.

    Thread-safe. :meth:`publish` holds one lock across the store append and the fan-out so
    subscribers receive events in ``seq`` order; the fan-out itself only appends to bounded
    buffers, so a slow subscriber never slows a publisher down.

    On a store that numbers events when it commits them (a replica's, whose ``replica_id``
    is set: several orchestrators write events to one database), :meth:`publish` only
    records: the events of every replica reach the subscribers through
    :meth:`deliver_committed`, from a follower of the store (:mod:`..replicas`), in the
    store's order.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._subs: tuple[Subscription, ...] = ()
        # A store with history (a restarted orchestrator) continues its sequence.
        last = getattr(store, "last_event_seq", None)
        self._last_seq = int(last()) if callable(last) else 0
        self._closed = False
        #: Whether the store numbers events when it commits them (see the class doc).
        self.numbered_at_commit = getattr(store, "replica_id", None) is not None

    @property
    def subscribed(self) -> bool:
        """Whether any subscription is open (a follower of the store reads events only
        then)."""
        return bool(self._subs)

    @property
    def wants_others(self) -> bool:
        """Whether an open subscription takes other replicas' events (not ``own_only``): a
        follower of the store reads only this orchestrator's own events otherwise."""
        return any(not sub.own_only for sub in self._subs)

    @property
    def last_seq(self) -> int:
        """``seq`` of the last event published through this bus (0 before the first)."""
        with self._lock:
            return self._last_seq

    def publish(
        self,
        type: EventType | str,
        *,
        severity: Severity | str | None = None,
        workflow_id: str | None = None,
        run_id: str | None = None,
        node_id: str | None = None,
        engine_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        time: float | None = None,
    ) -> Event:
        """Record an event and deliver it to the subscribers; returns it with its ``seq``.
        ``severity`` defaults to the type's (:data:`DEFAULT_SEVERITY`); ``time`` to now.
        With a :class:`~dagengine.orchestrator.store.Store` the event is committed with the
        next group (within milliseconds; at once when events are read)."""
        known = TYPE_DEFAULTS.get(type)  # EventType members hash and compare as their value
        if known is None:
            known = TYPE_DEFAULTS[event_type_of(type).value]
        kind, level = known
        if severity is not None:
            level = severity_of(severity).value
        when = _time.time() if time is None else float(time)
        payload = dict(data) if data is not None else {}
        # Group commit: the store assigns the sequence number now and writes the event with
        # the next burst (its readers commit pending events first), so publishing costs no
        # transaction. The bus lock orders sequence numbers and delivery alike.
        append = getattr(self.store, "append_event_later", None) or self.store.append_event
        with self._lock:
            seq = append(when, kind, level, workflow_id, run_id, node_id, engine_id, payload)
            event = Event(
                int(seq), when, kind, level, workflow_id, run_id, node_id, engine_id, payload
            )
            if not self.numbered_at_commit:
                self._deliver_locked(event)
        return event

    def publish_batch(
        self,
        items: Iterable[tuple[EventType | str, str | None, dict[str, Any]]],
        *,
        workflow_id: str | None = None,
        run_id: str | None = None,
        engine_id: str | None = None,
    ) -> None:
        """Publish several events of one run, in order, with their types' default
        severities: ``(type, node_id, data)`` each (``data`` is kept, not copied). One lock
        round for the lot: an engine reports a run's node events in bursts."""
        when = _time.time()
        events = []
        for type_, node_id, data in items:
            known = TYPE_DEFAULTS.get(type_)
            if known is None:
                known = TYPE_DEFAULTS[event_type_of(type_).value]
            events.append((when, *known, workflow_id, run_id, node_id, engine_id, data))
        append_many = getattr(self.store, "append_events_later", None)
        with self._lock:
            if append_many is not None:
                first = int(append_many(events))
                seqs: Iterable[int] = range(first, first + len(events))
            else:
                seqs = [int(self.store.append_event(*event)) for event in events]
            if self.numbered_at_commit:
                return  # (delivered once committed: deliver_committed)
            if not self._subs:  # nobody listens: no Event objects to build
                self._last_seq = max(seqs, default=self._last_seq)
                return
            for seq, event in zip(seqs, events, strict=True):
                self._deliver_locked(Event(seq, *event))

    def deliver_committed(self, events: Iterable[tuple[Event, bool]]) -> None:
        """Hand events read back from the store (in ``seq`` order) to the subscribers: the
        ones after the last delivered (a store that numbers events when it commits them),
        each with whether this orchestrator published it (``own_only`` subscriptions get
        only those)."""
        with self._lock:
            for event, own in events:
                if event.seq > self._last_seq:
                    self._deliver_locked(event, own)

    def _deliver_locked(self, event: Event, own: bool = True) -> None:
        self._last_seq = event.seq
        for sub in self._subs:
            if sub.own_only and not own:
                continue
            try:
                sub._offer(event)
            except Exception:  # a broken subscriber must not break publishing
                _log.exception("event subscriber failed; event %d not delivered", event.seq)

    def subscribe(
        self,
        filter: EventFilter | None = None,
        *,
        after: int | None = None,
        buffer: int = 1000,
        own_only: bool = False,
    ) -> Subscription:
        """A new :class:`Subscription`. It is registered for live events *before* it reads
        anything from the store, so replay and live overlap instead of leaving a gap.
        ``own_only``: with replicas, only the events this orchestrator published live (its
        own runs', engines', triggers'), not the other replicas' (for its logs, traces and
        metrics; what such a subscription reads back from the store after falling behind
        its buffer is every replica's)."""
        sub = Subscription(self, filter or EventFilter(), after=after, buffer=buffer)
        sub.own_only = own_only
        with self._lock:
            if self._closed:
                raise RuntimeError("the event bus is closed")
            self._subs = (*self._subs, sub)
        return sub

    def follow(self, handle: Callable[[Event], object], *, name: str) -> Follower:
        """Call ``handle`` with every event this orchestrator publishes from now on (with
        replicas: not the other replicas'), in order, on a daemon thread named ``name`` (the
        bus never waits for it: the subscription catches up from the store). A failed store
        read or a ``handle`` that raises is logged and the next event taken;
        :meth:`Follower.close` ends it."""
        return Follower(self.subscribe(buffer=10_000, own_only=True), handle, name)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def close(self) -> None:
        """Close every subscription; later :meth:`subscribe` calls fail (publishing still
        records events, so nothing is lost while the orchestrator shuts down)."""
        with self._lock:
            self._closed = True
            subs = self._subs
        for sub in subs:
            sub.close()


class Follower:
    """A thread handing each event of a subscription to a callable (:meth:`EventBus.follow`)."""

    def __init__(self, sub: Subscription, handle: Callable[[Event], object], name: str) -> None:
        self._sub = sub
        self._handle = handle
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name = self._thread.name
        while True:
            try:
                event = self._sub.get()
            except Exception:  # a store read failed: the next one may work
                _log.exception("%s: reading events failed", name)
                continue
            if event is None:  # closed
                return
            try:
                self._handle(event)
            except Exception:
                _log.exception("%s: event %d not handled", name, event.seq)

    def close(self, timeout: float = 5.0) -> None:
        """End the subscription and wait (up to ``timeout`` seconds) for the thread."""
        self._sub.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
