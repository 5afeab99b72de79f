"""The Prometheus metrics fed from the event bus: engine load by engine, bounded labels, and
the Grafana dashboard under deploy/ querying only metrics that exist."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from dagengine.api.metrics import _MAX_ENGINE_LABELS, Metrics
from dagengine.orchestrator import Event, Orchestrator

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dagengine-dashboard.json"


class _Feed:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.seq = 0

    def __call__(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        self.metrics.observe(Event(self.seq, time.time(), kind, "info", **fields))

    def sample(self, name: str) -> dict[str, float]:
        out = {}
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(name + "{"):
                labels, value = line.rsplit(" ", 1)
                out[labels[len(name) :]] = float(value)
        return out


def test_engine_load_follows_runs_on_and_off_each_engine() -> None:
    feed = _Feed()
    feed("run.started", run_id="r1", engine_id="e1")
    feed("run.started", run_id="r2", engine_id="e1")
    feed("run.started", run_id="r3", engine_id="e2")
    assert feed.sample("dagengine_engine_active_runs") == {
        '{engine_id="e1"}': 2.0,
        '{engine_id="e2"}': 1.0,
    }
    feed("run.completed", run_id="r1")
    feed("run.redispatched", run_id="r2")  # e1 lost it; it waits for another engine
    feed("run.started", run_id="r2", engine_id="e2")
    feed("run.failed", run_id="r3")
    assert feed.sample("dagengine_engine_active_runs") == {
        '{engine_id="e1"}': 0.0,
        '{engine_id="e2"}': 1.0,
    }
    feed("engine.left", engine_id="e1")
    assert feed.sample("dagengine_engine_active_runs") == {'{engine_id="e2"}': 1.0}


def test_engine_labels_are_bounded() -> None:
    feed = _Feed()
    for index in range(_MAX_ENGINE_LABELS + 50):
        feed("run.started", run_id=f"r{index}", engine_id=f"pod-{index}")
    series = feed.sample("dagengine_engine_active_runs")
    assert len(series) == _MAX_ENGINE_LABELS + 1
    assert series['{engine_id="other"}'] == 50.0


def test_a_real_orchestrator_run_moves_the_engine_gauge_back_to_zero() -> None:
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("one", "1.0.0", {"nodes": [{"id": "a", "lua": "return {}"}]})
        metrics = Metrics()
        orch.execute_workflow("one", {})
        orch.store.flush()
        for record in orch.store.events():
            metrics.observe(Event.from_record(record))
        text = metrics.render().decode()
    loads = re.findall(r'^dagengine_engine_active_runs\{engine_id="[^"]+"\} (\S+)$', text, re.M)
    assert loads == ["0.0"]


def _dashboard_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names |= set(re.findall(r"\bdagengine_[a-z_]+", target["expr"]))
    return names


def test_the_dashboard_queries_only_exported_metrics() -> None:
    feed = _Feed()
    feed("run.queued", run_id="r1")
    feed("run.started", run_id="r1", engine_id="e1")
    feed("node.started", run_id="r1", node_id="a")
    feed("node.succeeded", run_id="r1", node_id="a")
    feed("run.completed", run_id="r1")
    feed("engine.joined", engine_id="e1")
    feed("trigger.fired", data={"trigger_id": "t", "outcome": "fired"})
    feed("store.pruned", data={"runs": 1, "node_outputs": 1, "events": 1})
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in feed.metrics.render().decode().splitlines()
        if line and not line.startswith("#")
    }
    wanted = _dashboard_metrics()
    assert len(wanted) >= 8
    assert wanted <= exposed, sorted(wanted - exposed)


def test_a_drain_takes_every_event_in_order_even_those_read_back_from_the_store() -> None:
    """The metrics drain what a subscription holds at once (``get_many``): events dropped
    from a full buffer are read back from the store, in order, with the live ones."""
    orch = Orchestrator(store=":memory:")
    try:
        sub = orch.events.subscribe(buffer=3)
        for n in range(10):
            orch.events.publish("trigger.fired", data={"trigger_id": "t", "outcome": str(n)})
        got = sub.get_many(100)
        assert [e.data["outcome"] for e in got] == [str(n) for n in range(10)]
        assert sub.missed > 0  # (some did come from the store)
        assert sub.get_many(100) == []
        orch.events.publish("trigger.fired", data={"trigger_id": "t", "outcome": "late"})
        assert [e.data["outcome"] for e in sub.get_many(1)] == ["late"]
        sub.close()
        assert sub.get_many(100) == []
        metrics = Metrics().attach(orch)
        for outcome in ("fired", "fired", "error"):
            orch.events.publish("trigger.fired", data={"trigger_id": "hook", "outcome": outcome})
        text = metrics.render().decode()
        assert 'dagengine_trigger_fires_total{outcome="fired",trigger_id="hook"} 2.0' in text
        assert 'dagengine_trigger_fires_total{outcome="error",trigger_id="hook"} 1.0' in text
        metrics.close()
    finally:
        orch.stop()
