"""The run lifecycle state machine (dagengine.orchestrator.lifecycle), without threads,
stores or engines: every row of its table, fencing, cancel and failover."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from dagengine.orchestrator.lifecycle import (
    ATTEMPT_ENDS,
    STALE,
    TRANSITIONS,
    Action,
    Event,
    Guard,
    RunLifecycle,
    State,
    Transition,
)

A = Action


def _at(row: Transition) -> RunLifecycle:
    """A run in the row's state whose flags make the row's guard the first that holds."""
    run = RunLifecycle(
        state=row.source,
        attempt=1 if row.source in (State.DISPATCHED, State.RUNNING) else 0,
        engine_id="e1" if row.source in (State.DISPATCHED, State.RUNNING) else None,
        cancel_requested=row.guard is Guard.CANCELLED,
        stopping=row.guard is Guard.STOPPING,
    )
    return run


@pytest.mark.parametrize(
    "row", TRANSITIONS, ids=[f"{r.source.name}-{r.event.name}-{r.guard.name}" for r in TRANSITIONS]
)
def test_every_row_of_the_table(row: Transition) -> None:
    run = _at(row)
    before = run.attempt
    actions = run.handle(row.event, attempt=run.attempt, engine_id="e2")
    assert run.state is row.target
    assert actions == row.actions
    if row.event in (Event.CHOSEN, Event.ADMITTED):
        assert (run.attempt, run.engine_id) == (before + 1, "e2")
    else:
        assert run.attempt == before
    if row.target not in (State.DISPATCHED, State.RUNNING):
        assert run.engine_id is None
    if row.event is Event.CANCEL:
        assert run.cancel_requested
    if row.event is Event.STOP:
        assert run.stopping


def test_the_table_is_consistent() -> None:
    keys = [(r.source, r.event, r.guard) for r in TRANSITIONS]
    assert len(keys) == len(set(keys)), "a row twice"
    for source, event in {(r.source, r.event) for r in TRANSITIONS}:
        guards = [r.guard for r in TRANSITIONS if (r.source, r.event) == (source, event)]
        # The last row tried always applies: no event of a state falls through.
        assert guards[-1] is Guard.ANY, (source, event)
    # Final states have no rows: nothing leaves them.
    assert not [r for r in TRANSITIONS if r.source in (State.FINISHED, State.LEFT)]
    # A run on an engine always gives its slot back when it leaves it.
    for r in TRANSITIONS:
        if r.source is State.RUNNING and r.target is not State.RUNNING:
            assert r.actions[:2].count(A.RELEASE) == 1, r
        if r.source is State.DISPATCHED and r.target not in (State.DISPATCHED, State.RUNNING):
            assert A.RELEASE in r.actions, r
    # Every state is reachable from NEW.
    reached, todo = {State.NEW}, [State.NEW]
    while todo:
        state = todo.pop()
        for r in TRANSITIONS:
            if r.source is state and r.target not in reached:
                reached.add(r.target)
                todo.append(r.target)
    assert reached == set(State)


@pytest.mark.parametrize("state", [State.FINISHED, State.LEFT])
@pytest.mark.parametrize("event", list(Event))
def test_final_states_ignore_every_event(state: State, event: Event) -> None:
    run = RunLifecycle(state=state, attempt=2)
    actions = run.handle(event, attempt=1 if event in ATTEMPT_ENDS else 0)
    assert run.state is state
    # A late end of an older attempt still gives its slot back.
    assert actions == (STALE if event in ATTEMPT_ENDS else ())
    assert not run.cancel_requested
    assert not run.stopping


def test_events_without_a_row_change_nothing() -> None:
    run = RunLifecycle(state=State.QUEUED)
    assert run.handle(Event.LAUNCHING) == ()
    assert run.handle(Event.BUILT) == ()
    assert run.state is State.QUEUED
    running = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e")
    assert running.handle(Event.CHOSEN, engine_id="x") == ()
    assert (running.state, running.attempt, running.engine_id) == (State.RUNNING, 1, "e")


def test_a_run_from_submission_to_its_end() -> None:
    run = RunLifecycle()
    assert run.handle(Event.SUBMITTED) == ()
    assert run.state is State.QUEUED
    assert run.attempt == 0
    assert run.handle(Event.CHOSEN, engine_id="e1") == (A.CLAIM, A.ANNOUNCE, A.LAUNCH)
    assert (run.state, run.attempt, run.engine_id) == (State.DISPATCHED, 1, "e1")
    assert run.handle(Event.LAUNCHING) == ()
    assert run.state is State.RUNNING
    assert run.handle(Event.SUCCEEDED, attempt=1) == (A.RELEASE, A.SETTLE)
    assert (run.state, run.engine_id) == (State.FINISHED, None)


def test_a_run_admitted_at_once_is_not_claimed_again() -> None:
    # Its record was written as claimed by attempt 1.
    run = RunLifecycle()
    assert run.handle(Event.ADMITTED, engine_id="e1") == (A.ANNOUNCE, A.LAUNCH)
    assert (run.state, run.attempt, run.engine_id) == (State.DISPATCHED, 1, "e1")


def test_the_result_of_an_old_attempt_is_ignored() -> None:
    run = RunLifecycle()
    run.handle(Event.SUBMITTED)
    run.handle(Event.CHOSEN, engine_id="e1")
    run.handle(Event.LAUNCHING)
    assert run.handle(Event.LOST, attempt=1) == (A.RELEASE, A.ENGINE_LOST, A.REDISPATCH)
    run.handle(Event.CHOSEN, engine_id="e2")
    run.handle(Event.LAUNCHING)
    assert (run.state, run.attempt, run.engine_id) == (State.RUNNING, 2, "e2")
    # The partitioned engine comes back with attempt 1's end, in every form: each only gives
    # back the slot attempt 1 held.
    for event in ATTEMPT_ENDS:
        assert run.handle(event, attempt=1) == STALE == (A.RELEASE,)
        assert (run.state, run.attempt, run.engine_id) == (State.RUNNING, 2, "e2")
    assert run.handle(Event.SUCCEEDED, attempt=2) == (A.RELEASE, A.SETTLE)
    assert run.state is State.FINISHED
    # ... and after the end, too.
    assert run.handle(Event.FAILED, attempt=1) == STALE
    assert run.state is State.FINISHED


def test_a_newer_attempt_number_is_not_this_runs_either() -> None:
    run = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1")
    assert run.handle(Event.SUCCEEDED, attempt=2) == STALE
    assert run.state is State.RUNNING


def test_cancel_while_queued_ends_it_at_once() -> None:
    run = RunLifecycle()
    run.handle(Event.SUBMITTED)
    assert run.handle(Event.CANCEL) == (A.DEQUEUE, A.SETTLE_CANCELLED)
    assert run.state is State.FINISHED
    assert run.cancel_requested
    assert run.handle(Event.CANCEL) == ()  # a second cancel: already over


def test_cancel_while_dispatched_ends_it_at_its_launch() -> None:
    run = RunLifecycle()
    run.handle(Event.SUBMITTED)
    run.handle(Event.CHOSEN, engine_id="e1")
    # The engine may or may not have it yet: tell it anyway.
    assert run.handle(Event.CANCEL) == (A.CANCEL_ON_ENGINE,)
    assert run.state is State.DISPATCHED
    assert run.cancel_requested
    assert run.handle(Event.LAUNCHING) == (A.RELEASE, A.SETTLE_CANCELLED)
    assert (run.state, run.engine_id) == (State.FINISHED, None)


def test_cancel_while_running_ends_with_its_attempt() -> None:
    run = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1")
    assert run.handle(Event.CANCEL) == (A.CANCEL_ON_ENGINE,)
    assert run.state is State.RUNNING
    # The engine ends it as cancelled: that result is settled as it is.
    assert run.handle(Event.FAILED, attempt=1) == (A.RELEASE, A.SETTLE)
    assert run.state is State.FINISHED


def test_cancelled_runs_are_not_redispatched() -> None:
    lost = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1", cancel_requested=True)
    assert lost.handle(Event.LOST, attempt=1) == (A.RELEASE, A.ENGINE_LOST, A.SETTLE_CANCELLED)
    busy = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1", cancel_requested=True)
    assert busy.handle(Event.BUSY, attempt=1) == (A.MARK_FULL, A.RELEASE, A.SETTLE_CANCELLED)
    drained = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1", cancel_requested=True)
    assert drained.handle(Event.DRAINED, attempt=1) == (A.RELEASE, A.SETTLE)
    assert lost.state is busy.state is drained.state is State.FINISHED


def test_engine_lost_fails_over_to_a_new_attempt() -> None:
    run = RunLifecycle()
    run.handle(Event.SUBMITTED)
    run.handle(Event.CHOSEN, engine_id="e1")
    run.handle(Event.LAUNCHING)
    assert run.handle(Event.LOST, attempt=1) == (A.RELEASE, A.ENGINE_LOST, A.REDISPATCH)
    assert (run.state, run.attempt, run.engine_id) == (State.FAILING_OVER, 1, None)
    assert run.handle(Event.CHOSEN, engine_id="e2") == (A.CLAIM, A.ANNOUNCE, A.LAUNCH)
    assert (run.state, run.attempt, run.engine_id) == (State.DISPATCHED, 2, "e2")


def test_a_drained_run_fails_over_without_blaming_the_engine() -> None:
    run = RunLifecycle(state=State.RUNNING, attempt=3, engine_id="e1")
    assert run.handle(Event.DRAINED, attempt=3) == (A.RELEASE, A.REDISPATCH)
    assert run.state is State.FAILING_OVER


def test_a_busy_engine_sends_the_run_back_to_the_head_of_the_queue() -> None:
    run = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1")
    assert run.handle(Event.BUSY, attempt=1) == (A.MARK_FULL, A.RELEASE, A.REQUEUE)
    assert (run.state, run.engine_id) == (State.QUEUED, None)
    run.handle(Event.CHOSEN, engine_id="e1")
    assert run.attempt == 2  # the refused attempt was claimed: the next one is new


def test_stop_leaves_unfinished_runs_for_the_next_orchestrator() -> None:
    queued = RunLifecycle(state=State.QUEUED)
    assert queued.handle(Event.STOP) == ()
    assert queued.state is State.LEFT
    dispatched = RunLifecycle(state=State.DISPATCHED, attempt=1, engine_id="e1")
    dispatched.handle(Event.STOP)
    assert dispatched.handle(Event.LAUNCHING) == (A.RELEASE,)
    assert dispatched.state is State.LEFT
    running = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1")
    running.handle(Event.STOP)
    # Its engine closed under it: not failed, not re-dispatched.
    assert running.handle(Event.LOST, attempt=1) == (A.RELEASE,)
    assert running.state is State.LEFT
    # A run that succeeds meanwhile is settled.
    done = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1")
    done.handle(Event.STOP)
    assert done.handle(Event.SUCCEEDED, attempt=1) == (A.RELEASE, A.SETTLE)
    # A cancel requested before stops it for good.
    cancelled = RunLifecycle(state=State.RUNNING, attempt=1, engine_id="e1")
    cancelled.handle(Event.CANCEL)
    cancelled.handle(Event.STOP)
    assert cancelled.handle(Event.FAILED, attempt=1) == (A.RELEASE, A.SETTLE)


def test_a_parked_run_resumes_once_its_version_builds() -> None:
    run = RunLifecycle(attempt=2)  # a stored run, two attempts before the restart
    assert run.handle(Event.PARKED) == (A.PARK,)
    assert run.state is State.WAITING
    assert run.handle(Event.BUILT) == (A.REDISPATCH,)
    assert run.handle(Event.CHOSEN, engine_id="e1") == (A.CLAIM, A.ANNOUNCE, A.LAUNCH)
    assert run.attempt == 3
    parked = RunLifecycle()
    parked.handle(Event.PARKED)
    assert parked.handle(Event.CANCEL) == (A.SETTLE_CANCELLED,)
    assert parked.handle(Event.BUILT) == ()  # its version built too late: it is over
    assert parked.state is State.FINISHED


@dataclass
class _Shell:
    """A shell of dictionaries: carries out the actions like the orchestrator, fenced the way
    its store is, to follow one run across a failover."""

    run: RunLifecycle = field(default_factory=RunLifecycle)
    claimed: int = 0
    outputs: dict[str, tuple[int, object]] = field(default_factory=dict)
    launched: list[tuple[int, str | None, dict[str, object]]] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)
    front: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    def event(self, event: Event, attempt: int = 0, engine_id: str | None = None) -> None:
        held = self.run.engine_id  # the slot the current attempt holds
        for action in self.run.handle(event, attempt, engine_id):
            if action is A.CLAIM:
                self.claimed = self.run.attempt
            elif action is A.LAUNCH:
                assert self.run.engine_id is not None
                self.slots[self.run.engine_id] = self.slots.get(self.run.engine_id, 0) + 1
                completed = {n: out for n, (_, out) in self.outputs.items()}
                self.launched.append((self.run.attempt, self.run.engine_id, completed))
            elif action is A.RELEASE:
                assert held is not None
                self.slots[held] -= 1
            elif action is A.REDISPATCH:
                self.front.append("run")
            elif action is A.SETTLE:
                self.ended.append(event.name)

    def output(self, attempt: int, node: str, value: object) -> None:
        if attempt == self.claimed:  # the store's fence
            self.outputs[node] = (attempt, value)


def test_failover_keeps_the_completed_outputs() -> None:
    shell = _Shell()
    shell.event(Event.SUBMITTED)
    shell.event(Event.CHOSEN, engine_id="e1")
    shell.event(Event.LAUNCHING)
    shell.output(1, "a", {"x": 1})
    shell.event(Event.LOST, attempt=1)
    assert shell.run.state is State.FAILING_OVER
    assert shell.front == ["run"]
    assert shell.slots == {"e1": 0}
    shell.event(Event.CHOSEN, engine_id="e2")
    shell.event(Event.LAUNCHING)
    # Attempt 2 starts from attempt 1's completed node.
    assert shell.launched[-1] == (2, "e2", {"a": {"x": 1}})
    # The old engine comes back: its outputs and end are not the run's.
    shell.output(1, "b", {"stale": True})
    assert shell.run.handle(Event.SUCCEEDED, attempt=1) == STALE
    assert shell.ended == []
    assert shell.run.state is State.RUNNING
    shell.output(2, "b", {"y": 2})
    shell.event(Event.SUCCEEDED, attempt=2)
    assert shell.ended == ["SUCCEEDED"]
    assert shell.run.state is State.FINISHED
    assert shell.outputs == {"a": (1, {"x": 1}), "b": (2, {"y": 2})}
    assert shell.slots == {"e1": 0, "e2": 0}
