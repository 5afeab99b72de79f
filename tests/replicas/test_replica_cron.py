"""A cron trigger on two orchestrator replicas: each fire time is claimed by one, and the
overlap policy of the one that fires sees the runs the trigger started on the other.

Both triggers follow one manual clock; each replica's scheduler is driven by hand, so the
test decides which replica claims each fire time (no timing, no sleeps).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
from dagengine import DAG, Node, NodeContext, Orchestrator, PythonExecutor
from dagengine.orchestrator.config import Config
from dagengine.triggers import CronTrigger, ManualClock, TriggerScheduler
from pg import query
from processes import wait_for

pytestmark = pytest.mark.integration

START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
#: Released by the test: the runs of the workflow wait for it (or for their cancellation).
RELEASE = threading.Event()


def _held(ctx: NodeContext) -> dict[str, object]:
    while not RELEASE.wait(0.01):
        if ctx.cancelled:
            return {}
    return {}


class Replica:
    """A replica orchestrator with the cron trigger ``job`` every 10 s (``overlap``) on the
    shared manual clock, its scheduler run by :meth:`tick`."""

    def __init__(self, url: str, clock: ManualClock, overlap: str) -> None:
        config = dataclasses.replace(Config.local_from_env(), replica=True, lease_ttl=5.0)
        self.orch = Orchestrator(store=url, config=config)
        self.scheduler = TriggerScheduler(clock)
        self.trigger = CronTrigger(
            "job", "*/10 * * * * *", "held", scheduler=self.scheduler, overlap=overlap
        )

    def start(self) -> None:
        self.trigger.start(self.orch)

    def tick(self) -> None:
        self.scheduler.run_pending()

    def stop(self) -> None:
        self.trigger.stop()
        self.orch.stop()


@pytest.fixture
def pair(pg_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[Replica, Replica]]:
    RELEASE.clear()
    clock = ManualClock(START)
    a = Replica(pg_url, clock, request.param)
    b = Replica(pg_url, clock, request.param)
    held = DAG("held", "1.0.0")
    held.add_node(Node("wait", [], PythonExecutor(_held)))
    for replica in (a, b):
        replica.orch.register_workflow(held)
        replica.start()
    try:
        yield a, b
    finally:
        RELEASE.set()
        for replica in (a, b):
            replica.stop()


def _runs(url: str) -> list[tuple[str, str, str]]:
    """(run id, status, owner) of the workflow's runs, oldest first."""
    return [
        (run_id, status, owner)
        for run_id, status, owner in query(
            url, "SELECT run_id, status, owner FROM runs WHERE workflow_id = 'held' ORDER BY ord"
        )
    ]


def _fire(first: Replica, second: Replica, clock: ManualClock) -> None:
    """The next fire time (10 s on), claimed by ``first``, then seen by ``second``."""
    clock.advance(10)
    first.tick()
    second.tick()


@pytest.mark.parametrize("pair", ["skip"], indirect=True)
def test_skip_sees_the_run_another_replica_started(
    pg_url: str, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    clock = a.scheduler.clock
    assert isinstance(clock, ManualClock)
    _fire(a, b, clock)  # a fires at :10; the run waits
    wait_for(lambda: [s for _, s, _ in _runs(pg_url)] == ["running"], "a's run to start")
    _fire(b, a, clock)  # b claims :20: a's run is going, b skips
    _fire(b, a, clock)  # and :30
    assert b.trigger.stats["skipped"] == 2
    assert b.trigger.stats["fired"] == 0
    assert a.trigger.stats["claimed_elsewhere"] == 2
    assert len(_runs(pg_url)) == 1
    RELEASE.set()
    wait_for(lambda: [s for _, s, _ in _runs(pg_url)] == ["succeeded"], "a's run to finish")
    _fire(b, a, clock)  # :40, nothing going: b fires
    assert b.trigger.stats["fired"] == 1
    wait_for(lambda: len(_runs(pg_url)) == 2, "b's run")
    owners = [owner for _, _, owner in _runs(pg_url)]
    assert owners == [a.orch.replicas.replica_id, b.orch.replicas.replica_id]  # type: ignore[union-attr]


@pytest.mark.parametrize("pair", ["cancel_previous"], indirect=True)
def test_cancel_previous_cancels_the_run_another_replica_started(
    pg_url: str, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    clock = a.scheduler.clock
    assert isinstance(clock, ManualClock)
    _fire(a, b, clock)
    wait_for(lambda: [s for _, s, _ in _runs(pg_url)] == ["running"], "a's run to start")
    _fire(b, a, clock)  # b fires :20 and has a's run cancelled (by a, its owner)
    assert b.trigger.stats["cancelled"] == 1
    assert b.trigger.stats["fired"] == 1
    wait_for(
        lambda: [s for _, s, _ in _runs(pg_url)] == ["cancelled", "running"],
        "a's run cancelled, b's running",
    )


@pytest.mark.parametrize("pair", ["allow"], indirect=True)
def test_the_runs_of_a_trigger_are_told_by_its_input_not_by_text(
    pg_url: str, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    store = b.orch.store
    mine = a.orch.execute_workflow("held", {"_trigger_id": "job"}, wait=False)
    a.orch.execute_workflow("held", {"note": "job", "quoted": '"job"'}, wait=False)
    a.orch.execute_workflow("held", {"_trigger_id": "job-2"}, wait=False)
    wait_for(lambda: len(_runs(pg_url)) == 3, "the runs")
    assert store.unfinished_trigger_runs("job", "held") == [mine.run_id]  # type: ignore[attr-defined]
    assert store.unfinished_trigger_runs("job", "other") == []  # type: ignore[attr-defined]
    RELEASE.set()
    wait_for(lambda: {s for _, s, _ in _runs(pg_url)} == {"succeeded"}, "the runs to finish")
    assert store.unfinished_trigger_runs("job", "held") == []  # type: ignore[attr-defined]
