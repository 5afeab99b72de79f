"""Engine discovery (static list, self-registration, Kubernetes) and health checks.

The Kubernetes tests run the real ``kubernetes`` client against ``k8s_standin``, a
protocol-faithful stand-in of the Kubernetes API server (not a cluster); their names say so.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagengine.exceptions import DiscoveryError, EngineUnavailable
from dagengine.orchestrator.discovery import (
    RBAC_RULES,
    EngineEndpoint,
    HealthChecker,
    HealthReport,
    KubernetesDiscovery,
    SelfRegistration,
    StaticDiscovery,
    grpc_health_check,
    parse_address,
    parse_engine_addresses,
)
from k8s_standin import KubeApiStandIn
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from processes import EngineProcess, wait_for

TESTS_DIR = Path(__file__).resolve().parent.parent
WAIT = 20.0  # generous bound for conditions on a busy 2-core CI machine


class Changes:
    """An ``on_change`` recorder: every list it was called with, and a way to wait for one."""

    def __init__(self) -> None:
        self.calls: list[list[EngineEndpoint]] = []
        self._cond = threading.Condition()

    def __call__(self, endpoints: Sequence[EngineEndpoint]) -> None:
        with self._cond:
            self.calls.append(list(endpoints))
            self._cond.notify_all()

    @property
    def last(self) -> list[EngineEndpoint]:
        with self._cond:
            return self.calls[-1] if self.calls else []

    def wait(
        self, predicate: Callable[[list[EngineEndpoint]], bool], what: str
    ) -> list[EngineEndpoint]:
        deadline = time.monotonic() + WAIT
        with self._cond:
            while not (self.calls and predicate(self.calls[-1])):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"timed out waiting for {what}; last endpoints: {self.last}")
                self._cond.wait(remaining)
            return self.calls[-1]

    def wait_ids(self, *ids: str) -> list[EngineEndpoint]:
        return self.wait(lambda eps: sorted(e.engine_id for e in eps) == sorted(ids), str(ids))


# --- real engine processes ---------------------------------------------------------------------


@contextmanager
def engine_process(*args: str) -> Iterator[EngineProcess]:
    """Start an engine process, yield it, kill it at exit."""
    engine = EngineProcess(*args)
    try:
        yield engine
    finally:
        engine.kill()


# --- addresses ----------------------------------------------------------------------------------


def test_engine_addresses_parse_like_the_engines_variable() -> None:
    assert parse_engine_addresses("a:1, b:2,,a:1, [::1]:50051") == ["a:1", "b:2", "[::1]:50051"]
    assert parse_engine_addresses(["10.0.0.1:5", "10.0.0.1:5"]) == ["10.0.0.1:5"]
    assert parse_address("[fe80::1]:8080") == ("fe80::1", 8080)
    for bad in ("nohost", "h:", ":1", "h:0", "h:70000", "h:x", "::1:5"):
        with pytest.raises(DiscoveryError, match="host:port"):
            parse_engine_addresses(bad)


# --- static discovery ---------------------------------------------------------------------------


@dataclass
class FakeInfo:
    engine_id: str
    capacity: int
    version: str = "0.0.0-fake"


class FakeEngines:
    """A fake client factory: ``engines[address]`` answers Info, other addresses are down."""

    def __init__(self, engines: dict[str, FakeInfo]) -> None:
        self.engines = engines
        self.calls: list[str] = []
        self.closed = 0

    def __call__(self, address: str) -> FakeEngines.Client:
        return FakeEngines.Client(self, address)

    class Client:
        def __init__(self, owner: FakeEngines, address: str) -> None:
            self.owner, self.address = owner, address

        def info(self) -> FakeInfo:
            self.owner.calls.append(self.address)
            info = self.owner.engines.get(self.address)
            if info is None:
                raise EngineUnavailable("down (fake)", address=self.address)
            return info

        def close(self) -> None:
            self.owner.closed += 1


def test_static_discovery_asks_each_engine_for_its_id_and_retries_unreachable_ones() -> None:
    fakes = FakeEngines({"h1:1": FakeInfo("e1", 4), "h2:2": FakeInfo("e2", 8)})
    changes = Changes()
    disco = StaticDiscovery("h1:1,h2:2,h3:3", fakes, interval=0.05)
    disco.start(changes)
    try:
        first = changes.wait_ids("e1", "e2")
        assert first == [
            EngineEndpoint("e1", "h1:1", 4, "0.0.0-fake"),
            EngineEndpoint("e2", "h2:2", 8, "0.0.0-fake"),
        ]
        # h3 comes up later: picked up at a later round, without a restart.
        fakes.engines["h3:3"] = FakeInfo("e3", 2)
        changes.wait_ids("e1", "e2", "e3")
        # A known engine that stops answering stays listed (liveness is the health checker's).
        del fakes.engines["h1:1"]
        calls = len(fakes.calls)
        wait_for(lambda: len(fakes.calls) >= calls + 6, "two more rounds")
        assert [e.engine_id for e in disco.endpoints()] == ["e1", "e2", "e3"]
    finally:
        disco.stop()
    assert disco._thread is not None
    assert not disco._thread.is_alive()
    assert fakes.closed == len(fakes.calls)  # every client closed


def test_static_discovery_keeps_the_first_of_two_engines_with_one_id() -> None:
    fakes = FakeEngines({"h1:1": FakeInfo("same", 1), "h2:2": FakeInfo("same", 2)})
    changes = Changes()
    disco = StaticDiscovery(["h1:1", "h2:2"], fakes, interval=30)
    disco.start(changes)
    try:
        assert changes.wait_ids("same") == [EngineEndpoint("same", "h1:1", 1, "0.0.0-fake")]
    finally:
        disco.stop()


@pytest.mark.integration
def test_static_discovery_of_a_real_engine_process() -> None:
    with engine_process("--engine-id", "static-1", "--capacity", "3") as engine:
        changes = Changes()
        disco = StaticDiscovery([engine.address], interval=30, timeout=10)
        disco.start(changes)
        try:
            (endpoint,) = changes.wait_ids("static-1")
        finally:
            disco.stop()
        assert endpoint.address == engine.address
        assert endpoint.capacity == 3
        assert endpoint.version


# --- self-registration --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_self_registration_heartbeats_expiry_and_conflicts() -> None:
    clock = FakeClock()
    reg = SelfRegistration(heartbeat_timeout=30, clock=clock)
    changes = Changes()
    first = reg.register("e1", "10.0.0.1:50051", 4, "1.0")
    assert first.accepted
    assert first.heartbeat_interval == 10
    reg.start(changes)  # engines registered before start are reported at once
    try:
        assert changes.last == [EngineEndpoint("e1", "10.0.0.1:50051", 4, "1.0")]
        reg.register("e2", "10.0.0.2:50051", 2)
        assert [e.engine_id for e in changes.last] == ["e1", "e2"]
        calls = len(changes.calls)
        clock.now += 20
        assert reg.register("e1", "10.0.0.1:50051", 4, "1.0").accepted  # heartbeat
        assert len(changes.calls) == calls  # nothing changed: no callback

        # Same id from another address while the first is alive: refused, nothing changes.
        refused = reg.register("e1", "10.0.0.9:50051", 4)
        assert not refused.accepted
        assert "10.0.0.1:50051" in refused.reason
        assert reg.endpoints()[0].address == "10.0.0.1:50051"

        clock.now += 15  # e2 silent for 35 s > 30, e1 for 15 s
        assert reg.expire() == ["e2"]
        assert [e.engine_id for e in changes.last] == ["e1"]
        clock.now += 31
        assert reg.register("e1", "10.0.0.9:50051", 5).accepted  # old one expired: taken
        assert changes.last == [EngineEndpoint("e1", "10.0.0.9:50051", 5)]
        assert reg.deregister("e1")
        assert changes.last == []
        assert not reg.deregister("e1")
    finally:
        reg.stop()


@pytest.mark.parametrize(
    ("engine_id", "address", "capacity", "message"),
    [
        ("", "h:1", 1, "engine_id"),
        ("e", "nope", 1, "host:port"),
        ("e", "h:1", 0, "capacity"),
    ],
)
def test_self_registration_refuses_invalid_registrations(
    engine_id: str, address: str, capacity: int, message: str
) -> None:
    with pytest.raises(DiscoveryError, match=message):
        SelfRegistration(10).register(engine_id, address, capacity)


def test_self_registration_drops_silent_engines_in_the_background() -> None:
    reg = SelfRegistration(heartbeat_timeout=0.2)
    changes = Changes()
    reg.start(changes)
    try:
        reg.register("e1", "h:1", 1)
        changes.wait_ids("e1")
        changes.wait_ids()  # no more heartbeats: dropped by the sweeper
    finally:
        reg.stop()
    assert reg._thread is not None
    assert not reg._thread.is_alive()


# --- Kubernetes (against the API server stand-in) ----------------------------------------------


@pytest.fixture
def standin() -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn() as server:
        yield server


def standin_api(server: KubeApiStandIn) -> k8s_client.CoreV1Api:
    """The real client, configured for the stand-in's URL (no kubeconfig involved)."""
    return k8s_client.CoreV1Api(k8s_client.ApiClient(k8s_client.Configuration(host=server.url)))


@contextmanager
def k8s_discovery(server: KubeApiStandIn, **kwargs: Any) -> Iterator[tuple[Any, Changes]]:
    kwargs.setdefault("namespace", "engines")
    kwargs.setdefault("label_selector", "app=workflow-engine")
    disco = KubernetesDiscovery(api=standin_api(server), backoff_initial=0.05, **kwargs)
    changes = Changes()
    disco.start(changes)
    try:
        yield disco, changes
    finally:
        disco.stop()
        assert disco._thread is not None
        assert not disco._thread.is_alive()


ENGINE = {"app": "workflow-engine"}


def test_kubernetes_api_standin_speaks_list_watch_and_410_to_the_real_client(
    standin: KubeApiStandIn,
) -> None:
    """The stand-in itself, through the plain client: a faithful list, watch and 410."""
    api = standin_api(standin)
    standin.run_pod("a", "10.1.0.1", namespace="ns", labels=ENGINE)
    standin.run_pod("b", "10.1.0.2", namespace="ns", labels={"app": "other"})
    pods = api.list_namespaced_pod("ns", label_selector="app=workflow-engine")
    assert [p.metadata.name for p in pods.items] == ["a"]
    start = pods.metadata.resource_version
    assert start == str(standin.resource_version)
    standin.set_ready("a", False, namespace="ns")
    standin.delete_pod("a", namespace="ns")
    events = [
        (e["type"], e["object"].metadata.name, e["object"].metadata.resource_version)
        for e in k8s_watch.Watch().stream(
            api.list_namespaced_pod, "ns", label_selector="app=workflow-engine",
            resource_version=start, timeout_seconds=1,
        )
    ]  # fmt: skip
    assert [(t, n) for t, n, _ in events] == [("MODIFIED", "a"), ("DELETED", "a")]
    assert int(events[0][2]) < int(events[1][2])
    standin.compact()
    with pytest.raises(ApiException) as gone:
        list(k8s_watch.Watch().stream(
            api.list_namespaced_pod, "ns", resource_version=start, timeout_seconds=1
        ))  # fmt: skip
    assert gone.value.status == 410


def test_kubernetes_discovery_initial_list_against_api_standin(standin: KubeApiStandIn) -> None:
    standin.run_pod("engine-a", "10.0.0.1", namespace="engines", labels=ENGINE)
    standin.run_pod(
        "engine-b", "10.0.0.2", namespace="engines",
        labels={**ENGINE, "engine-id": "custom-b"},
        annotations={"workflow-engine/port": "6000", "workflow-engine/capacity": "32"},
    )  # fmt: skip
    standin.create_pod("pending", namespace="engines", labels=ENGINE)  # not scheduled yet
    standin.create_pod("not-ready", namespace="engines", labels=ENGINE)
    standin.set_phase("not-ready", "Running", namespace="engines", pod_ip="10.0.0.3")
    standin.run_pod("other-app", "10.0.0.4", namespace="engines", labels={"app": "web"})
    standin.run_pod("elsewhere", "10.0.0.5", namespace="default", labels=ENGINE)
    with k8s_discovery(standin) as (_, changes):
        assert changes.wait_ids("custom-b", "engine-a") == [
            EngineEndpoint("custom-b", "10.0.0.2:6000", 32),
            EngineEndpoint("engine-a", "10.0.0.1:50051", 10),
        ]
    assert standin.served() <= {
        (verb, resource)
        for rule in RBAC_RULES
        for verb in rule["verbs"]
        for resource in rule["resources"]
    }, "discovery made an API call its RBAC rules do not grant"
    assert RBAC_RULES == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def test_kubernetes_discovery_follows_pod_lifecycle_against_api_standin(
    standin: KubeApiStandIn,
) -> None:
    with k8s_discovery(standin, default_port=7000, default_capacity=3) as (disco, changes):
        assert standin.wait_for_watchers(1)
        assert disco.endpoints() == []
        # Pending -> Running (IP, not Ready) -> Ready: counted only at the last step.
        standin.create_pod("e1", namespace="engines", labels=ENGINE)
        standin.set_phase("e1", "Running", namespace="engines", pod_ip="10.0.0.1")
        standin.run_pod("marker", "10.0.0.9", namespace="engines", labels=ENGINE)
        changes.wait_ids("marker")
        assert [e.engine_id for e in disco.endpoints()] == ["marker"]
        standin.set_ready("e1", True, namespace="engines")
        assert changes.wait_ids("e1", "marker")[0] == EngineEndpoint("e1", "10.0.0.1:7000", 3)
        # Annotations change the endpoint.
        standin.set_metadata(
            "e1", namespace="engines", annotations={"workflow-engine/capacity": "12"}
        )
        changes.wait(lambda eps: eps[0].capacity == 12, "capacity 12")
        # Readiness lost, then back.
        standin.set_ready("e1", False, namespace="engines")
        changes.wait_ids("marker")
        standin.set_ready("e1", True, namespace="engines")
        changes.wait_ids("e1", "marker")
        # Terminating (deletionTimestamp set) already counts as gone; then deleted.
        standin.begin_delete("e1", namespace="engines")
        changes.wait_ids("marker")
        standin.delete_pod("e1", namespace="engines")
        # Phase Succeeded / Failed: gone.
        standin.set_phase("marker", "Succeeded", namespace="engines")
        changes.wait_ids()
        standin.run_pod("e2", "10.0.0.2", namespace="engines", labels=ENGINE)
        changes.wait_ids("e2")
        standin.set_phase("e2", "Failed", namespace="engines")
        changes.wait_ids()
        # Relabelled into and out of the selector.
        standin.run_pod("e3", "10.0.0.3", namespace="engines", labels={"app": "web"})
        standin.set_metadata("e3", namespace="engines", labels=ENGINE)
        changes.wait_ids("e3")
        standin.set_metadata("e3", namespace="engines", labels={"app": "web"})
        changes.wait_ids()
    assert standin.count("list") == 1  # all of it through one watch


def test_kubernetes_discovery_relists_after_410_gone_against_api_standin(
    standin: KubeApiStandIn,
) -> None:
    standin.run_pod("keep", "10.0.0.1", namespace="engines", labels=ENGINE)
    standin.run_pod("leave", "10.0.0.2", namespace="engines", labels=ENGINE)
    with k8s_discovery(standin) as (disco, changes):
        changes.wait_ids("keep", "leave")
        assert standin.wait_for_watchers(1)
        # The watch is cut (an API server restart) and, before discovery's resumed watch is
        # served, things change and the history is compacted: resuming from the last
        # version seen gets 410 Gone, so discovery must list again to see the changes it
        # never got events for.
        standin.hold_watches(True)
        standin.drop_watches()
        assert standin.wait_for_held(1)
        standin.delete_pod("leave", namespace="engines")
        standin.run_pod("join", "10.0.0.3", namespace="engines", labels=ENGINE)
        standin.compact()
        standin.hold_watches(False)
        changes.wait_ids("join", "keep")
        assert standin.gone_sent == 1
        assert disco.lists == 2
        assert standin.count("list") == 2
        # And it watches again from the new list: later changes arrive as events.
        standin.run_pod("late", "10.0.0.4", namespace="engines", labels=ENGINE)
        changes.wait_ids("join", "keep", "late")


def test_kubernetes_discovery_skips_pods_with_bad_annotations_or_clashing_ids_against_api_standin(
    standin: KubeApiStandIn,
) -> None:
    standin.run_pod(
        "bad-port", "10.0.0.1", namespace="engines", labels=ENGINE,
        annotations={"workflow-engine/port": "http"},
    )  # fmt: skip
    standin.run_pod(
        "bad-capacity", "10.0.0.2", namespace="engines", labels=ENGINE,
        annotations={"workflow-engine/capacity": "0"},
    )  # fmt: skip
    # The original manifest gave every pod the same id: only one of them may be that engine.
    standin.run_pod("dup-b", "10.0.0.4", namespace="engines", labels={**ENGINE, "engine-id": "x"})
    standin.run_pod("dup-a", "10.0.0.3", namespace="engines", labels={**ENGINE, "engine-id": "x"})
    standin.run_pod("v6", "fd00::5", namespace="engines", labels=ENGINE)
    with k8s_discovery(standin) as (_, changes):
        assert changes.wait_ids("v6", "x") == [
            EngineEndpoint("v6", "[fd00::5]:50051", 10),
            EngineEndpoint("x", "10.0.0.3:50051", 10),  # pod names sort: dup-a wins
        ]


def test_kubernetes_discovery_stops_promptly_during_a_quiet_watch_against_api_standin(
    standin: KubeApiStandIn,
) -> None:
    disco = KubernetesDiscovery(
        "engines", "app=workflow-engine", api=standin_api(standin), watch_timeout=600
    )
    disco.start(Changes())
    assert standin.wait_for_watchers(1)
    began = time.monotonic()
    disco.stop(timeout=10)
    assert disco._thread is not None
    assert not disco._thread.is_alive()
    assert time.monotonic() - began < 5


def test_kubernetes_discovery_without_a_cluster_config_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    with pytest.raises(DiscoveryError, match="in-cluster"):
        KubernetesDiscovery(in_cluster=True)
    with pytest.raises(DiscoveryError, match="kubeconfig"):
        KubernetesDiscovery(in_cluster=False)


# --- health checks ------------------------------------------------------------------------------


class Transitions:
    """Records on_unhealthy / on_recovered calls."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, EngineEndpoint, HealthReport]] = queue.Queue()

    def unhealthy(self, endpoint: EngineEndpoint, report: HealthReport) -> None:
        self.events.put(("unhealthy", endpoint, report))

    def recovered(self, endpoint: EngineEndpoint, report: HealthReport) -> None:
        self.events.put(("recovered", endpoint, report))

    def next(self) -> tuple[str, EngineEndpoint, HealthReport]:
        try:
            return self.events.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail("no health transition reported")


E1 = EngineEndpoint("e1", "h1:1", 1)
E2 = EngineEndpoint("e2", "h2:2", 1)


def test_health_checker_evicts_and_readmits_with_the_time_to_detect() -> None:
    clock = FakeClock()
    alive = {"e1": True, "e2": True}
    seen: list[str] = []

    def check(endpoint: EngineEndpoint) -> bool:
        seen.append(endpoint.engine_id)
        if endpoint.engine_id == "e2" and not alive["e2"]:
            raise EngineUnavailable("connection refused (fake)")
        return alive[endpoint.engine_id]

    t = Transitions()
    hc = HealthChecker(10, check, t.unhealthy, t.recovered, failures_before_unhealthy=2,
                       clock=clock)  # fmt: skip
    try:
        hc.set_endpoints([E1, E2])
        hc.check_now()
        assert t.events.empty()
        assert sorted(seen) == ["e1", "e2"]
        clock.now += 10
        alive["e1"] = alive["e2"] = False
        hc.check_now()  # one failure each: not yet (two required)
        assert t.events.empty()
        assert hc.is_healthy("e1")
        clock.now += 10
        hc.check_now()
        reports = {ep.engine_id: (kind, rep) for kind, ep, rep in (t.next(), t.next())}
        kind, report = reports["e1"]
        assert kind == "unhealthy"
        assert report.consecutive_failures == 2
        assert report.detect_seconds == 20
        assert report.since_first_failure == 10
        assert report.error == "check failed"
        assert "EngineUnavailable: connection refused" in (reports["e2"][1].error or "")
        assert hc.healthy() == []
        assert hc.is_healthy("e1") is False
        clock.now += 10
        hc.check_now()  # still down: no repeated report
        assert t.events.empty()
        alive["e1"] = True
        clock.now += 10
        hc.check_now()
        kind, endpoint, report = t.next()
        assert (kind, endpoint, report.down_seconds) == ("recovered", E1, 20)
        assert hc.healthy() == [E1]
        # Forgotten engines are not checked and report nothing.
        hc.set_endpoints([E1])
        assert hc.is_healthy("e2") is None
    finally:
        hc.stop()


def test_health_checker_counts_a_hanging_check_as_failed_without_piling_up() -> None:
    release = threading.Event()
    calls: list[str] = []

    def check(endpoint: EngineEndpoint) -> bool:
        calls.append(endpoint.engine_id)
        if endpoint.engine_id == "e1":
            release.wait(WAIT)  # a frozen engine
        return True

    t = Transitions()
    hc = HealthChecker(1.0, check, t.unhealthy, t.recovered, timeout=0.05)
    try:
        hc.set_endpoints([E1, E2])
        hc.check_now()
        kind, endpoint, report = t.next()
        assert (kind, endpoint) == ("unhealthy", E1)
        assert report.error == "no answer within 0.05s"
        hc.check_now()  # e1's check is still hanging: not submitted again
        assert calls.count("e1") == 1
        assert calls.count("e2") == 2
        release.set()
        wait_for(lambda: hc._engines["e1"].inflight is not None
                 and hc._engines["e1"].inflight.done(), "the hung check to return")  # fmt: skip
        hc.check_now()
        assert t.next()[0] == "recovered"
    finally:
        release.set()
        hc.stop()


def test_health_checker_thread_detects_within_the_interval() -> None:
    alive = threading.Event()
    alive.set()
    t = Transitions()
    hc = HealthChecker(0.05, lambda ep: alive.is_set(), t.unhealthy, t.recovered)
    hc.set_endpoints([E1])
    hc.start()
    try:
        wait_for(lambda: hc.rounds >= 2, "two rounds")
        alive.clear()
        kind, _, report = t.next()
        assert kind == "unhealthy"
        assert report.detect_seconds is not None
        assert report.detect_seconds < 5
        alive.set()
        assert t.next()[0] == "recovered"
    finally:
        hc.stop()
    assert hc._thread is not None
    assert not hc._thread.is_alive()


@pytest.mark.integration
def test_grpc_health_check_of_a_real_engine_process() -> None:
    check = grpc_health_check(timeout=5)
    t = Transitions()
    with engine_process("--engine-id", "health-1") as engine:
        endpoint = EngineEndpoint("health-1", engine.address, 1)
        assert check(endpoint) is True
        hc = HealthChecker(60, check, t.unhealthy, t.recovered, timeout=5)
        try:
            hc.set_endpoints([endpoint])
            hc.check_now()
            assert t.events.empty()
            engine.kill()  # SIGKILL
            hc.check_now()
            kind, _, report = t.next()
            assert kind == "unhealthy"
            assert report.error
        finally:
            hc.stop()
