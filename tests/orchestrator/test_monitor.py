"""The event bus and the monitor: typed events, filters, cursor replay across the live
boundary, slow subscribers, async iteration, and following engines' Watch streams."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from dagengine.engine import EngineClient
from dagengine.exceptions import EngineUnavailable
from dagengine.orchestrator.events import (
    DEFAULT_SEVERITY,
    Event,
    EventBus,
    EventType,
    Severity,
    Subscription,
)
from dagengine.orchestrator.monitor import Monitor
from dagengine.orchestrator.store import Store
from dagengine.results import NodeEvent
from test_discovery import WAIT, engine_process, wait_for


@pytest.fixture
def bus() -> Iterator[EventBus]:
    store = Store(":memory:")
    bus = EventBus(store)
    try:
        yield bus
    finally:
        bus.close()
        store.close()


@pytest.fixture
def monitor(bus: EventBus) -> Iterator[Monitor]:
    mon = Monitor(bus)
    try:
        yield mon
    finally:
        mon.close()


def drain(sub: Subscription) -> list[Event]:
    """Everything the subscription has now (nothing published concurrently)."""
    out = []
    while (event := sub.get(timeout=0)) is not None:
        out.append(event)
    return out


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


# --- typed events ------------------------------------------------------------------------------


def test_publish_persists_and_types_events(bus: EventBus) -> None:
    first = bus.publish(EventType.RUN_QUEUED, workflow_id="wf", run_id="r1", data={"n": 1})
    failed = bus.publish("run.failed", workflow_id="wf", run_id="r1")
    loud = bus.publish("node.log", run_id="r1", node_id="a", severity=Severity.CRITICAL)
    assert (first.type, first.severity, first.data) == ("run.queued", "info", {"n": 1})
    assert (failed.severity, loud.severity) == ("error", "critical")
    assert first.seq < failed.seq < loud.seq == bus.last_seq
    stored = [Event.from_record(r) for r in bus.store.events()]
    assert stored == [first, failed, loud]
    assert first.to_dict()["data"] == {"n": 1}
    with pytest.raises(ValueError, match="unknown event type"):
        bus.publish("run.complete")
    with pytest.raises(ValueError, match="unknown severity"):
        bus.publish("run.queued", severity="fatal")
    # Every type has a default severity, and the documented ones are as promised.
    assert set(DEFAULT_SEVERITY) == set(EventType)
    assert DEFAULT_SEVERITY[EventType.ENGINE_UNHEALTHY] is Severity.WARNING
    assert DEFAULT_SEVERITY[EventType.RUN_REDISPATCHED] is Severity.WARNING
    assert DEFAULT_SEVERITY[EventType.NODE_FAILED] is Severity.ERROR
    assert not any(s is Severity.CRITICAL for s in DEFAULT_SEVERITY.values())


def test_a_new_bus_on_an_old_store_continues_its_sequence() -> None:
    store = Store(":memory:")
    try:
        old = EventBus(store).publish("run.queued")
        bus = EventBus(store)
        assert bus.last_seq == old.seq
        assert bus.publish("run.started").seq == old.seq + 1
    finally:
        store.close()


def test_publish_batch_numbers_types_and_delivers_in_order(bus: EventBus) -> None:
    sub = bus.subscribe()
    before = bus.publish("run.started", run_id="r1")
    bus.publish_batch(
        [
            ("node.started", "a", {"attempt": 1}),
            (EventType.NODE_FAILED, "a", {"attempt": 1, "error": {"type": "E"}}),
            ("node.skipped", "b", {"attempt": 1}),
        ],
        workflow_id="wf",
        run_id="r1",
        engine_id="e1",
    )
    live = drain(sub)
    assert [(e.type, e.severity, e.node_id) for e in live[1:]] == [
        ("node.started", "info", "a"),
        ("node.failed", "error", "a"),
        ("node.skipped", "info", "b"),
    ]
    assert seqs(live) == list(range(before.seq, before.seq + 4))
    assert live[-1].seq == bus.last_seq
    assert {(e.workflow_id, e.engine_id) for e in live[1:]} == {("wf", "e1")}
    assert [Event.from_record(r) for r in bus.store.events()] == live
    with pytest.raises(ValueError, match="unknown event type"):
        bus.publish_batch([("node.exploded", "a", {})])
    sub.close()


def test_publishing_never_waits_for_a_store_transaction() -> None:
    """Thread A holds a store transaction and publishes inside it; thread B publishes
    meanwhile. Events are committed in groups by the store's writer, so B must not wait for
    A's transaction (and nothing can deadlock); both events end up stored, in seq order."""
    store = Store(":memory:")
    bus = EventBus(store)
    a_inside = threading.Event()
    b_done = threading.Event()
    done: list[str] = []

    def a() -> None:
        with store.transaction():
            a_inside.set()
            assert b_done.wait(WAIT), "B's publish waited for A's transaction"
            bus.publish("run.queued", run_id="a")
        done.append("a")

    def b() -> None:
        assert a_inside.wait(WAIT)
        bus.publish("run.queued", run_id="b")
        done.append("b")
        b_done.set()

    # Daemon threads: if they deadlock, the test fails instead of hanging the run.
    threads = [threading.Thread(target=f, name=f.__name__.upper(), daemon=True) for f in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(done) == ["a", "b"], "publishers deadlocked"
    assert [r.run_id for r in store.events()] == ["b", "a"]
    store.close()


# --- filters -----------------------------------------------------------------------------------


def test_subscriptions_filter_by_workflow_run_type_and_severity(
    bus: EventBus, monitor: Monitor
) -> None:
    by_wf = monitor.subscribe(workflow_id="wf-a")
    by_run = monitor.subscribe(run_id="r2")
    by_type = monitor.subscribe(types=["run.completed", EventType.RUN_FAILED])
    by_pattern = monitor.subscribe(types="engine.*")
    warnings = monitor.subscribe(min_severity="warning")
    combined = monitor.subscribe(workflow_id="wf-a", types=["node.*"], min_severity="error")
    published = [
        bus.publish("run.started", workflow_id="wf-a", run_id="r1"),
        bus.publish("node.failed", workflow_id="wf-a", run_id="r1", node_id="n"),
        bus.publish("node.retrying", workflow_id="wf-a", run_id="r1", node_id="n"),
        bus.publish("run.failed", workflow_id="wf-a", run_id="r1"),
        bus.publish("run.completed", workflow_id="wf-b", run_id="r2"),
        bus.publish("engine.unhealthy", engine_id="e1"),
        bus.publish("engine.joined", engine_id="e2"),
        bus.publish("trigger.fired", workflow_id="wf-b", severity="critical"),
    ]
    s = seqs(published)
    assert seqs(drain(by_wf)) == s[0:4]
    assert seqs(drain(by_run)) == [s[4]]
    assert seqs(drain(by_type)) == [s[3], s[4]]
    assert seqs(drain(by_pattern)) == [s[5], s[6]]
    assert seqs(drain(warnings)) == [s[1], s[2], s[3], s[5], s[7]]
    assert seqs(drain(combined)) == [s[1]]
    # The same filters apply to stored history.
    assert seqs(monitor.history(workflow_id="wf-a", min_severity="error")) == [s[1], s[3]]
    with pytest.raises(ValueError, match="unknown event type"):
        monitor.subscribe(types=["nope"])
    with pytest.raises(ValueError, match="matches no event type"):
        monitor.subscribe(types=["nope.*"])
    with pytest.raises(ValueError, match="unknown severity"):
        monitor.subscribe(min_severity="loud")


# --- cursors -----------------------------------------------------------------------------------


def test_replay_from_a_cursor_then_live_without_gap_or_duplicate(
    bus: EventBus, monitor: Monitor
) -> None:
    history = [bus.publish("run.queued", run_id=f"r{i}") for i in range(30)]
    with monitor.subscribe(after=history[9].seq) as sub:
        live = bus.publish("run.started", run_id="live")
        got = [sub.get(timeout=WAIT) for _ in range(21)]
        assert seqs([g for g in got if g is not None]) == [*seqs(history[10:]), live.seq]
        assert sub.get(timeout=0) is None
        assert sub.cursor == live.seq
        assert sub.missed == 0
    # Re-subscribing at the cursor resumes exactly after it.
    later = bus.publish("run.completed", run_id="live")
    with monitor.subscribe(after=live.seq) as again:
        assert seqs(drain(again)) == [later.seq]
    # A cursor of 0 replays everything; a filter applies to the replay too.
    with monitor.subscribe(after=0, types=["run.started"]) as started:
        assert seqs(drain(started)) == [live.seq]


@pytest.mark.parametrize("buffer", [10_000, 4], ids=["roomy-buffer", "tiny-buffer"])
def test_cursor_replay_races_a_busy_publisher_without_gaps_or_duplicates(
    bus: EventBus, monitor: Monitor, buffer: int
) -> None:
    """Subscribing with a cursor while another thread publishes: the replayed and live parts
    meet exactly (also when the live buffer overflows during the replay)."""
    for i in range(1200):  # more than one store page of history
        bus.publish("node.started", run_id="r", node_id=str(i))
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            bus.publish("node.succeeded", run_id="r")

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_for(lambda: bus.last_seq > 1300, "the publisher to get going")
        start = 100
        sub = monitor.subscribe(run_id="r", after=start, buffer=buffer)
        received: list[int] = []
        while len(received) < 3000:
            event = sub.get(timeout=WAIT)
            assert event is not None, "the subscription stalled"
            received.append(event.seq)
    finally:
        stop.set()
        publisher.join()
    assert received == list(range(start + 1, start + 1 + len(received)))
    if buffer == 4:
        assert sub.missed > 0  # it fell behind, and caught up from the store


# --- slow subscribers --------------------------------------------------------------------------


def test_a_subscriber_that_never_reads_does_not_slow_publishing(
    bus: EventBus, monitor: Monitor
) -> None:
    def publish_many(n: int) -> float:
        began = time.perf_counter()
        for i in range(n):
            bus.publish("node.succeeded", run_id="r", node_id=str(i))
        return time.perf_counter() - began

    baseline = publish_many(10_000)
    stalled = monitor.subscribe(buffer=100)
    first = bus.last_seq + 1
    with_stalled = publish_many(10_000)
    # The publisher never waits for the subscriber: the cost is that of publishing alone
    # (generous factor for a shared CI machine; a blocking bus would not finish at all).
    assert with_stalled < 3 * baseline + 1.0, (with_stalled, baseline)
    assert stalled.missed == 9_900
    assert stalled.lagging
    assert stalled.cursor is None
    # The dropped events are replayed from the store, in order, after the buffered ones.
    everything = stalled.replay_missed()
    assert seqs(everything) == list(range(first, first + 10_000))
    assert stalled.cursor == first + 9_999
    assert not stalled.lagging
    # ... and it is live again afterwards.
    after = bus.publish("run.completed", run_id="r")
    assert seqs(drain(stalled)) == [after.seq]
    assert stalled.missed == 9_900  # a running total


def test_a_lagging_subscriber_catches_up_by_iterating_and_by_resubscribing(
    bus: EventBus, monitor: Monitor
) -> None:
    slow = monitor.subscribe(buffer=5)
    published = [bus.publish("node.started", node_id=str(i)) for i in range(50)]
    assert slow.missed == 45
    # Plain iteration sees every event: the buffered five, then the dropped ones (from the
    # store), then live ones.
    got = [slow.get(timeout=WAIT) for _ in range(50)]
    assert seqs([g for g in got if g is not None]) == seqs(published)
    live = bus.publish("node.started", node_id="live")
    assert slow.get(timeout=WAIT) == live
    # A subscriber that gives up on a lagging subscription resumes from its cursor.
    quitter = monitor.subscribe(buffer=2)
    more = [bus.publish("node.started", node_id=f"m{i}") for i in range(10)]
    first = quitter.get(timeout=WAIT)
    assert first == more[0]
    assert quitter.missed == 8
    quitter.close()
    with monitor.subscribe(after=quitter.cursor) as resumed:
        assert seqs(drain(resumed)) == seqs(more[1:])


# --- iteration and lifecycle -------------------------------------------------------------------


def test_sync_iteration_ends_when_the_subscription_or_monitor_closes(
    bus: EventBus, monitor: Monitor
) -> None:
    sub = monitor.subscribe()
    seen: list[Event] = []
    reader = threading.Thread(target=lambda: seen.extend(sub))
    reader.start()
    event = bus.publish("run.queued")
    wait_for(lambda: seen == [event], "the reader to get the event")
    monitor.close()
    reader.join(WAIT)
    assert not reader.is_alive()
    assert sub.closed
    with pytest.raises(RuntimeError, match="closed"):
        monitor.subscribe()


def test_async_iteration_waits_without_blocking_the_loop(bus: EventBus, monitor: Monitor) -> None:
    history = [bus.publish("run.queued", run_id=str(i)) for i in range(3)]

    async def main() -> list[Event]:
        async with monitor.subscribe(after=0) as sub:
            got = [await sub.__anext__() for _ in range(3)]  # replayed (store read off-loop)
            # Nothing pending: waiting times out, which needs a loop that is not blocked.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.__anext__(), timeout=0.1)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            tick_task = asyncio.create_task(ticker())

            def later() -> None:
                # Published from another thread once the loop has shown it is running.
                while ticks < 10:
                    time.sleep(0.001)
                bus.publish("run.started", run_id="x")
                bus.publish("run.completed", run_id="x")

            publisher = threading.Thread(target=later)
            publisher.start()
            async for event in sub:
                got.append(event)
                if event.type == "run.completed":
                    break
            tick_task.cancel()
            await asyncio.to_thread(publisher.join)
            return got

    got = asyncio.run(main())
    assert seqs(got[:3]) == seqs(history)
    assert [e.type for e in got[3:]] == ["run.started", "run.completed"]


def test_async_iteration_ends_on_close(bus: EventBus, monitor: Monitor) -> None:
    sub = monitor.subscribe()

    async def main() -> list[Event]:
        async def consume() -> list[Event]:
            return [event async for event in sub]

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)  # let it start waiting
        await asyncio.to_thread(sub.close)
        return await asyncio.wait_for(task, WAIT)

    assert asyncio.run(main()) == []


# --- following engines -------------------------------------------------------------------------


@dataclass
class FakeEngineEvent:
    """Shaped like dagengine.engine.EngineEvent."""

    run_id: str
    attempt: int
    engine_id: str
    event: NodeEvent
    missed: int = 0


@dataclass
class FakeWatch:
    """A Watch stream fed by the test; ``fail()`` breaks it like a dead engine."""

    items: queue.Queue[Any] = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.items.get()
            if item is None or self.closed.is_set():
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        self.closed.set()
        self.items.put(None)


class FakeEngineClients:
    """A client factory whose ``watch()`` streams are FakeWatch objects, one per call."""

    def __init__(self) -> None:
        self.watches: queue.Queue[FakeWatch] = queue.Queue()
        self.addresses: list[str] = []

    def __call__(self, address: str) -> FakeEngineClients:
        self.addresses.append(address)
        return self

    def watch(self) -> FakeWatch:
        stream = FakeWatch()
        self.watches.put(stream)
        return stream

    def close(self) -> None:
        pass

    def next_watch(self) -> FakeWatch:
        try:
            return self.watches.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail("the monitor did not open a watch stream")


def node_event(kind: str, node: str | None, seq: int, **detail: Any) -> NodeEvent:
    return NodeEvent(seq, kind, node, 1, 1_700_000_000.0 + seq, detail or None)


def test_attach_to_engine_republishes_node_events_and_reconnects(bus: EventBus) -> None:
    clients = FakeEngineClients()
    registered = {"e1": "h1:1"}
    monitor = Monitor(
        bus,
        client_factory=clients,
        engine_address=registered.get,
        workflow_of_run={"run-1": "wf"}.get,
        backoff_initial=0.01,
    )
    try:
        sub = monitor.subscribe(types=["node.*"])
        monitor.attach_to_engine("e1")
        stream = clients.next_watch()
        for item in (
            FakeEngineEvent("run-1", 2, "e1", node_event("run_started", None, 1)),
            FakeEngineEvent("run-1", 2, "e1", node_event("node_started", "a", 2)),
            FakeEngineEvent(
                "run-1", 2, "e1", node_event("node_succeeded", "a", 3, output={"big": 1})
            ),
            FakeEngineEvent("run-1", 2, "e1", node_event("missed", None, 0), missed=4),
            FakeEngineEvent(
                "run-1", 2, "e1",
                node_event("node_failed", "b", 9, error={"type": "ValueError", "message": "x"}),
            ),
            FakeEngineEvent("run-1", 2, "e1", node_event("run_finished", None, 10)),
        ):  # fmt: skip
            stream.items.put(item)
        got = [sub.get(timeout=WAIT) for _ in range(3)]
        assert [(e.type, e.node_id, e.severity) for e in got if e] == [
            ("node.started", "a", "info"),
            ("node.succeeded", "a", "info"),
            ("node.failed", "b", "error"),
        ]
        started, succeeded, failed = (e for e in got if e)
        assert started.engine_id == "e1"
        assert started.workflow_id == "wf"
        assert started.run_id == "run-1"
        assert started.time == 1_700_000_002.0
        assert started.data == {"attempt": 2, "node_attempt": 1, "engine_seq": 2}
        assert "output" not in succeeded.data  # outputs stay out of the event log
        assert failed.data["error"] == {"type": "ValueError", "message": "x"}
        assert monitor.attached()["e1"]["engine_missed"] == 4

        # The engine goes away: the follower reconnects (to its current address).
        registered["e1"] = "h1:2"
        stream.items.put(EngineUnavailable("stream broke (fake)"))
        second = clients.next_watch()
        assert clients.addresses == ["h1:1", "h1:2"]
        second.items.put(FakeEngineEvent("run-1", 3, "e1", node_event("node_started", "c", 1)))
        event = sub.get(timeout=WAIT)
        assert event is not None
        assert event.node_id == "c"
        assert monitor.attached()["e1"]["connections"] == 2

        # Detach closes the stream and ends the thread.
        assert monitor.detach("e1")
        assert second.closed.is_set()
        assert monitor.attached() == {}
        assert not monitor.detach("e1")
    finally:
        monitor.close()


def test_following_stops_when_the_engine_is_no_longer_registered(bus: EventBus) -> None:
    clients = FakeEngineClients()
    registered: dict[str, str] = {"e1": "h1:1"}
    monitor = Monitor(bus, client_factory=clients, engine_address=registered.get,
                      backoff_initial=0.01)  # fmt: skip
    try:
        monitor.attach_to_engine("e1")
        stream = clients.next_watch()
        att = monitor._attached["e1"]
        del registered["e1"]
        stream.items.put(EngineUnavailable("gone (fake)"))
        assert att.thread is not None
        att.thread.join(WAIT)
        assert not att.thread.is_alive()
        assert clients.watches.empty()  # no reconnection to an unregistered engine
    finally:
        monitor.close()


def test_monitor_close_stops_followers(bus: EventBus) -> None:
    clients = FakeEngineClients()
    monitor = Monitor(bus, client_factory=clients)
    monitor.attach_to_engine("e1", "h1:1")
    monitor.attach_to_engine("e1", "h1:1")  # same address: nothing new
    stream = clients.next_watch()
    att = monitor._attached["e1"]
    monitor.close()
    assert stream.closed.is_set()
    assert att.thread is not None
    assert not att.thread.is_alive()
    assert clients.watches.empty()
    with pytest.raises(ValueError, match="no address"):
        Monitor(bus).attach_to_engine("e2")


@pytest.mark.integration
def test_attach_to_a_real_engine_process(bus: EventBus) -> None:
    spec = {
        "id": "watched",
        "nodes": [
            {"id": "a", "lua": "return {x = 1}"},
            {"id": "b", "deps": ["a"], "lua": "return {y = 2}"},
        ],
    }
    with engine_process("--engine-id", "watched-1") as engine:
        monitor = Monitor(bus, backoff_initial=0.05)
        try:
            sub = monitor.subscribe(types=["node.succeeded"])
            monitor.attach_to_engine("watched-1", engine.address)
            with EngineClient(engine.address, timeout=30) as client:

                def run_once() -> list[Any]:
                    """Run the workflow; the events of that run the monitor passes on."""
                    run_id = f"run-{uuid.uuid4().hex}"
                    assert client.run(spec, {}, run_id=run_id).ok
                    seen = []
                    while (event := sub.get(timeout=1.0)) is not None:
                        if event.run_id == run_id:
                            seen.append(event)
                        if len(seen) == 2:
                            break
                    return seen

                # The Watch subscription is set up asynchronously, and may come up in the
                # middle of a run (its second node seen, not its first): run until one run is
                # seen whole; from then on every run is.
                deadline = time.monotonic() + WAIT
                while len(run_once()) < 2:
                    assert time.monotonic() < deadline, "the monitor never saw a whole run"
                for _ in range(3):
                    events = run_once()
                    assert [e.node_id for e in events] == ["a", "b"]
                    assert {e.engine_id for e in events} == {"watched-1"}
                    assert events[0].data["attempt"] == 1
        finally:
            monitor.close()
        assert monitor.attached() == {}


def test_a_follower_hands_over_every_event_in_order_past_a_failing_one(bus: EventBus) -> None:
    seen: list[str] = []
    done = threading.Event()

    def handle(event: Any) -> None:
        if event.type == "run.failed":
            raise RuntimeError("a handler that breaks on one event")
        seen.append(event.type)
        if event.type == "run.cancelled":
            done.set()

    follower = bus.follow(handle, name="test-follower")
    for kind in ("run.queued", "run.failed", "run.started", "run.cancelled"):
        bus.publish(kind)
    assert done.wait(WAIT)
    follower.close()
    assert seen == ["run.queued", "run.started", "run.cancelled"]
    bus.publish("run.queued")  # closed: no longer handed over
    assert seen == ["run.queued", "run.started", "run.cancelled"]
