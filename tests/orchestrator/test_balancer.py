"""Load balancers and the run queue.

Consistent hashing is measured on 100k keys: an even spread with no load (max/mean <= 1.1 over
10 engines, see DEFAULT_VNODES for how 2000 vnodes were chosen) and movement on join/leave.

Tolerance on movement: when an 11th engine joins, the keys that move are exactly those it now
owns, whose expected fraction is 1/11 = 0.0909. Its share of the ring is the sum of its 2000
arcs among 22000, so its relative standard deviation is about 1/sqrt(2000) = 2.2% (0.0020
absolute); sampling 100k keys adds sqrt(p(1-p)/1e5) = 0.0009. We allow +-0.01, about 4.5
standard deviations, so the check is meaningful (a ring moving 2/N or 1/(2N) fails it by far)
and not flaky for any engine names hypothesis picks.
"""

from __future__ import annotations

import math
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping

import pytest
from dagengine.exceptions import ConfigError, DagEngineError, QueueFull
from dagengine.orchestrator.balancer import (
    DEFAULT_VNODES,
    ConsistentHash,
    EngineLoad,
    LeastLoaded,
    LoadBalancer,
    RoundRobin,
    RunQueue,
    make_balancer,
    stable_hash,
)
from hypothesis import given, settings
from hypothesis import strategies as st

KEYS = [f"workflow-{i}" for i in range(100_000)]
ENGINES = [f"engine-{i}" for i in range(10)]


def ring(engines: list[str], **kw: float) -> ConsistentHash:
    balancer = ConsistentHash(**kw)  # type: ignore[arg-type]
    for engine in engines:
        balancer.add(engine)
    return balancer


def assignment(balancer: ConsistentHash) -> list[str]:
    owners = [balancer.owner(key) for key in KEYS]
    assert None not in owners
    return owners  # type: ignore[return-value]


def idle(engines: list[str], capacity: int = 10) -> dict[str, EngineLoad]:
    return {e: EngineLoad(e, capacity, 0) for e in engines}


def spread(owners: list[str]) -> float:
    counts = Counter(owners)
    return max(counts.values()) / (len(owners) / len(counts))


# --- consistent hashing: spread and movement ---------------------------------------------------


def test_even_spread_with_no_load() -> None:
    balancer = ring(ENGINES)
    owners = assignment(balancer)
    assert len(set(owners)) == 10
    assert spread(owners) <= 1.1
    # With no load, choose() is the plain ring owner.
    loads = idle(ENGINES)
    assert all(balancer.choose(k, loads) == o for k, o in zip(KEYS[:2000], owners, strict=False))


@settings(max_examples=4, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=20), min_size=10, max_size=10))
def test_even_spread_for_any_engine_names(names: set[str]) -> None:
    assert spread(assignment(ring(sorted(names)))) <= 1.1


def test_join_moves_about_one_nth_and_only_to_the_newcomer() -> None:
    balancer = ring(ENGINES)
    before = assignment(balancer)
    balancer.add("engine-10")
    after = assignment(balancer)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(a == "engine-10" for _, a in moved)  # nothing shuffles between old engines
    assert abs(len(moved) / len(KEYS) - 1 / 11) <= 0.01


def test_leave_moves_only_the_leavers_keys() -> None:
    balancer = ring([*ENGINES, "engine-10"])
    before = assignment(balancer)
    balancer.remove("engine-3")
    after = assignment(balancer)
    for b, a in zip(before, after, strict=True):
        if b == "engine-3":
            assert a != "engine-3"
        else:
            assert a == b
    assert abs(before.count("engine-3") / len(KEYS) - 1 / 11) <= 0.01


@settings(max_examples=3, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=11, max_size=11, unique=True))
def test_movement_on_join_for_any_names(names: list[str]) -> None:
    balancer = ring(names[:10])
    before = assignment(balancer)
    balancer.add(names[10])
    after = assignment(balancer)
    moved = [a for b, a in zip(before, after, strict=True) if b != a]
    assert set(moved) <= {names[10]}
    assert abs(len(moved) / len(KEYS) - 1 / 11) <= 0.01


def test_ring_is_independent_of_add_order_and_process() -> None:
    forward = ring(ENGINES, vnodes=50)
    backward = ring(ENGINES[::-1], vnodes=50)
    sample = KEYS[:500]
    owners = [forward.owner(k) for k in sample]
    assert owners == [backward.owner(k) for k in sample]
    # stable_hash is not Python's salted hash(): another process (another hash seed) agrees.
    code = (
        "import sys, json\n"
        "from dagengine.orchestrator.balancer import ConsistentHash\n"
        "r = ConsistentHash(vnodes=50)\n"
        f"for e in {ENGINES!r}: r.add(e)\n"
        f"print(json.dumps([r.owner(f'workflow-{{i}}') for i in range({len(sample)})]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == str(owners).replace("'", '"')
    assert stable_hash("x") == stable_hash("x") != stable_hash("y")


def test_default_vnodes_documented_value() -> None:
    assert DEFAULT_VNODES == 2000
    assert ConsistentHash().vnodes == DEFAULT_VNODES
    with pytest.raises(ValueError, match="vnodes"):
        ConsistentHash(vnodes=0)
    with pytest.raises(ValueError, match="load_factor"):
        ConsistentHash(load_factor=0.9)


# --- bounded load -------------------------------------------------------------------------------


def _bound(active: Mapping[str, int], factor: float = 1.25) -> int:
    return math.ceil(factor * (sum(active.values()) + 1) / len(active))


@pytest.mark.parametrize("hot", [True, False])
def test_bounded_load_under_simulated_load(hot: bool) -> None:
    balancer = ring(ENGINES, vnodes=200)
    active = dict.fromkeys(ENGINES, 0)
    for i in range(3000):
        key = "hot-workflow" if hot else KEYS[i]
        bound = _bound(active)
        loads = {e: EngineLoad(e, 10_000, n) for e, n in active.items()}
        engine = balancer.choose(key, loads)
        assert engine is not None
        active[engine] += 1
        assert active[engine] <= bound
        if i % 3 == 2:  # runs finish too, unevenly
            busiest = max(active, key=lambda e: (active[e], e))
            active[busiest] -= 1
    if hot:
        # A hot key spills over instead of piling onto one engine.
        assert max(active.values()) <= _bound(active)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["place", "finish"]), st.integers(0, 30)), max_size=200),
    factor=st.sampled_from([1.0, 1.1, 1.25, 2.0]),
)
def test_bounded_load_property(ops: list[tuple[str, int]], factor: float) -> None:
    engines = ENGINES[:5]
    balancer = ring(engines, vnodes=20, load_factor=factor)
    active = dict.fromkeys(engines, 0)
    for op, arg in ops:
        if op == "finish":
            busy = [e for e in engines if active[e]]
            if busy:
                active[busy[arg % len(busy)]] -= 1
            continue
        bound = _bound(active, factor)
        engine = balancer.choose(f"k{arg}", {e: EngineLoad(e, 1000, n) for e, n in active.items()})
        assert engine is not None
        active[engine] += 1
        assert active[engine] <= bound


def test_bound_falls_back_to_any_engine_with_room() -> None:
    # Uneven capacities: the only engines under the bound are full, so the bound yields.
    balancer = ring(["a", "b"], vnodes=10)
    loads = {"a": EngineLoad("a", 1, 1), "b": EngineLoad("b", 100, 50)}
    assert balancer.bound(loads) == math.ceil(1.25 * 52 / 2)  # 33, below b's 50
    assert balancer.choose("k", loads) == "b"


# --- capacity, for every balancer ---------------------------------------------------------------


def _balancers() -> list[LoadBalancer]:
    return [ConsistentHash(vnodes=20), RoundRobin(), LeastLoaded()]


@settings(max_examples=80, deadline=None)
@given(
    caps=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5)), min_size=1, max_size=6),
    key=st.text(max_size=5),
)
def test_engines_at_capacity_are_never_chosen(caps: list[tuple[int, int]], key: str) -> None:
    loads = {
        f"e{i}": EngineLoad(f"e{i}", cap, min(active, cap)) for i, (cap, active) in enumerate(caps)
    }
    for balancer in _balancers():
        for engine in loads:
            balancer.add(engine)
        for _ in range(3):
            chosen = balancer.choose(key, loads)
            if any(load.has_room for load in loads.values()):
                assert chosen is not None
                assert loads[chosen].has_room
            else:
                assert chosen is None


@pytest.mark.parametrize("balancer", _balancers(), ids=lambda b: type(b).__name__)
def test_none_when_all_full_and_members_only(balancer: LoadBalancer) -> None:
    assert balancer.choose("k", {}) is None  # no engines at all
    balancer.add("a")
    balancer.add("b")
    full = {"a": EngineLoad("a", 2, 2), "b": EngineLoad("b", 1, 1)}
    assert balancer.choose("k", full) is None
    # An engine that is not a member is never chosen; a member missing from loads is skipped.
    assert balancer.choose("k", {**full, "stranger": EngineLoad("stranger", 9, 0)}) is None
    assert balancer.choose("k", {"b": EngineLoad("b", 1, 0)}) == "b"
    balancer.remove("b")
    balancer.remove("b")  # idempotent
    assert balancer.choose("k", {"b": EngineLoad("b", 1, 0)}) is None
    assert isinstance(balancer, LoadBalancer)


def test_round_robin_takes_turns_and_skips_full() -> None:
    rr = RoundRobin()
    for engine in "abc":
        rr.add(engine)
    loads = idle(list("abc"))
    assert [rr.choose("k", loads) for _ in range(6)] == list("abcabc")
    loads["b"] = EngineLoad("b", 1, 1)
    assert [rr.choose("k", loads) for _ in range(4)] == list("acac")
    rr.remove("a")
    loads["b"] = EngineLoad("b", 1, 0)
    assert [rr.choose("k", loads) for _ in range(3)] == list("bcb")


def test_least_loaded_uses_utilisation_with_deterministic_ties() -> None:
    ll = LeastLoaded()
    for engine in "cab":
        ll.add(engine)
    assert ll.choose("k", idle(list("abc"))) == "a"  # all idle: smallest id
    loads = {
        "a": EngineLoad("a", 10, 5),  # 50%
        "b": EngineLoad("b", 4, 1),  # 25%
        "c": EngineLoad("c", 8, 2),  # 25%, but more active runs than b
    }
    assert ll.choose("k", loads) == "b"
    loads["b"] = EngineLoad("b", 4, 4)
    assert ll.choose("k", loads) == "c"


def test_make_balancer() -> None:
    assert isinstance(make_balancer(), ConsistentHash)
    assert isinstance(make_balancer("consistent-hash"), ConsistentHash)
    assert isinstance(make_balancer("round-robin"), RoundRobin)
    assert isinstance(make_balancer(" Least-Loaded "), LeastLoaded)
    with pytest.raises(ConfigError, match="LOAD_BALANCER_TYPE='random'") as info:
        make_balancer("random")
    assert info.value.variable == "LOAD_BALANCER_TYPE"


# --- the run queue ------------------------------------------------------------------------------


def test_queue_is_fifo_and_bounded() -> None:
    q: RunQueue[str] = RunQueue(3)
    for item in "abc":
        q.put(item)
    with pytest.raises(QueueFull, match=r"DAGENGINE_QUEUE_LIMIT=3") as info:
        q.put("d")
    assert isinstance(info.value, DagEngineError)
    assert info.value.limit == 3
    assert len(q) == 3
    assert q.peek() == "a"
    assert q.snapshot() == ["a", "b", "c"]
    assert q.get() == "a"
    q.put("d")
    q.put_front("a")  # a dispatch that found no engine gives the run its place back,
    assert q.snapshot() == ["a", "b", "c", "d"]  # even past the limit: it had a place
    with pytest.raises(QueueFull):
        q.put("e")
    assert q.remove("c")
    assert not q.remove("zzz")
    assert [q.get(timeout=0) for _ in range(3)] == ["a", "b", "d"]
    assert not q


def test_queue_limit_zero_refuses_everything() -> None:
    q: RunQueue[int] = RunQueue(0)
    with pytest.raises(QueueFull, match="=0"):
        q.put(1)
    with pytest.raises(ValueError, match="limit"):
        RunQueue(-1)


class _ObservedCondition(threading.Condition):
    """A condition that tells (``waiting``) when a thread first waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        # Set while the lock is held: whoever takes the lock next finds the waiter waiting.
        self.waiting.set()
        return super().wait(timeout)


def test_queue_get_waits_times_out_and_wakes_on_close() -> None:
    q: RunQueue[int] = RunQueue(10)
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - start >= 0.04
    threading.Timer(0.05, q.put, args=(7,)).start()
    assert q.get(timeout=5) == 7
    got: list[BaseException] = []

    def waiter() -> None:
        try:
            q.get()
        except queue.Empty as exc:
            got.append(exc)

    # close() must wake a get() that is already waiting: see it wait on the queue's condition.
    cond = _ObservedCondition()
    q._cond = cond
    thread = threading.Thread(target=waiter)
    thread.start()
    assert cond.waiting.wait(5), "get() never waited"
    q.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(got) == 1


def test_queue_threads_keep_every_item_once() -> None:
    q: RunQueue[int] = RunQueue(10_000)
    taken: list[int] = []
    lock = threading.Lock()

    def produce(base: int) -> None:
        for i in range(500):
            q.put(base + i)

    def consume() -> None:
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                return
            with lock:
                taken.append(item)

    producers = [threading.Thread(target=produce, args=(b * 1000,)) for b in range(4)]
    consumers = [threading.Thread(target=consume) for _ in range(3)]
    for t in producers + consumers:
        t.start()
    for t in producers + consumers:
        t.join()
    assert sorted(taken) == sorted(b * 1000 + i for b in range(4) for i in range(500))
