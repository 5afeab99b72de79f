"""How fast a prune goes (issue 23): 5% of the store's time by default, more while the
background pruner falls behind, so that a busy service's store still reaches a plateau; the
SQLite writer paces its slices by the policy's duty. Against both backends where a store is
involved (``store_target``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dagengine.orchestrator.pruner import CATCH_UP_AFTER, CATCH_UP_STEP, Pruner
from dagengine.orchestrator.store import PostgresStore, Store, open_store, prune_slices
from dagengine.orchestrator.store.prune_slices import (
    MAX_SLICE_TIME,
    SLICE_GAP,
    SLICE_TIME,
    PruneJob,
    pace,
)
from dagengine.orchestrator.store.retention import (
    MAX_PRUNE_DUTY,
    PRUNE_DUTY,
    PruneReport,
    RetentionPolicy,
)
from test_retention import DAY, NOW, add_run, run_ids

AnyStore = Store | PostgresStore


@pytest.fixture
def store(store_target: str) -> Iterator[AnyStore]:
    s = open_store(store_target)
    try:
        yield s
    finally:
        s.close()


class Published:
    """An event bus that keeps what the pruner publishes."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, kind: Any, *, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


def test_the_default_pace_is_the_documented_slice_and_gap() -> None:
    slice_time, gap = pace(PRUNE_DUTY)
    assert slice_time == pytest.approx(SLICE_TIME)
    assert gap == pytest.approx(SLICE_GAP)


@pytest.mark.parametrize("duty", [PRUNE_DUTY, 0.1, 0.2, 0.35, MAX_PRUNE_DUTY])
def test_a_pace_takes_its_share_of_the_store(duty: float) -> None:
    slice_time, gap = pace(duty)
    assert slice_time / (slice_time + gap) == pytest.approx(duty)
    assert SLICE_TIME <= slice_time <= MAX_SLICE_TIME


def test_a_sqlite_prune_job_is_paced_by_its_policy() -> None:
    gentle = PruneJob(RetentionPolicy(DAY), 0.0, {})
    hurried = PruneJob(RetentionPolicy(DAY, duty=0.4), 0.0, {})
    assert (gentle.slice_time, gentle.gap) == pace(PRUNE_DUTY)
    assert (hurried.slice_time, hurried.gap) == pace(0.4)
    hurried.settle(committed=True)  # (no slice yet: only its end time is noted)
    now = time.monotonic()
    assert not hurried.due(now)
    assert hurried.due(now + hurried.gap + 1e-3)
    assert hurried.gap < gentle.gap


@pytest.mark.parametrize("duty", [0.0, -0.1, MAX_PRUNE_DUTY + 0.01])
def test_a_duty_out_of_range_is_refused(duty: float) -> None:
    with pytest.raises(ValueError, match=re.escape("retention duty must be > 0 and <= 0.5")):
        RetentionPolicy(DAY, duty=duty)


def test_a_pass_that_falls_behind_doubles_its_share_up_to_the_most(store: AnyStore) -> None:
    pruner = Pruner(store, None, lambda: RetentionPolicy(DAY), interval=100.0)
    start = CATCH_UP_AFTER * 100.0
    step = CATCH_UP_STEP * 100.0
    assert pruner.duty(0.0) == PRUNE_DUTY
    assert pruner.duty(start - 0.01) == PRUNE_DUTY
    assert pruner.duty(start) == 2 * PRUNE_DUTY
    assert pruner.duty(start + step) == 4 * PRUNE_DUTY
    assert pruner.duty(start + 2 * step) == 8 * PRUNE_DUTY
    assert pruner.duty(start + 3 * step) == MAX_PRUNE_DUTY
    assert pruner.duty(10 * 100.0) == MAX_PRUNE_DUTY


def test_a_long_pass_catches_up_and_the_next_starts_gentle(store: AnyStore) -> None:
    """A pass still going after a quarter of its interval asks the store for a larger share,
    says so in its report and ``store.pruned`` event, deletes exactly the old runs, and the
    next pass starts at the default share again."""
    for index in range(40):
        add_run(store, f"old{index:02}", age_days=40, outputs=1, events=1)
    # (The pruner prunes by the clock: this run finished an hour ago.)
    add_run(store, "new", age_days=(NOW - time.time()) / DAY + 1 / 24, outputs=1, events=1)
    bus = Published()
    # A pass is behind after 0.1 s; each batch of 4 runs is made to take 20 ms.
    pruner = Pruner(store, bus, lambda: RetentionPolicy(DAY), interval=0.4, batch=4, pause=0)  # type: ignore[arg-type]
    original = store.prune
    duties: list[float] = []

    def slow_prune(policy: RetentionPolicy, **kw: Any) -> PruneReport:
        duties.append(policy.duty)
        time.sleep(0.02)
        return original(policy, **kw)

    store.prune = slow_prune  # type: ignore[method-assign]
    report = pruner.run_pass()
    assert report.runs == 40
    assert run_ids(store) == {"new"}
    assert duties[0] == PRUNE_DUTY
    assert duties == sorted(duties)  # (never lowered within a pass)
    assert duties[-1] > PRUNE_DUTY
    assert max(duties) <= MAX_PRUNE_DUTY
    assert report.duty == duties[-1]
    [(_, data)] = bus.events
    assert data["duty"] == report.duty
    assert data["runs"] == 40

    duties.clear()
    add_run(store, "old-again", age_days=40, outputs=0, events=0)
    assert pruner.run_pass().runs == 1
    assert duties == [PRUNE_DUTY]


def test_a_slice_is_sized_by_its_cpu_time_not_by_its_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slice's statement that waits (for the GIL, under load) but costs little CPU does not
    shrink the next slice: sized by wall time, slices fell to a run each."""
    sizes: list[int] = []

    def waits(db: object, runs: dict[str, Any], policy: RetentionPolicy) -> PruneReport:
        sizes.append(len(runs))
        time.sleep(4 * SLICE_TIME)  # (a wait: no CPU)
        return PruneReport(runs=len(runs))

    monkeypatch.setattr(prune_slices, "delete_runs", waits)
    runs = {f"r{index}": (0, 0) for index in range(200)}
    job = PruneJob(RetentionPolicy(None), 0.0, runs)
    while not job.done.is_set():
        job.step(None)  # type: ignore[arg-type]
        job.settle(committed=True)
    assert sizes[:3] == [8, 16, 32]
    assert sum(sizes) == 200
    assert job.report.runs == 200
