"""OpenTelemetry traces of runs, checked with the SDK's in-memory exporter: a span per run and
per node attempt, the caller's W3C trace context from an HTTP request, sub-workflows under
their parent node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dagengine.api import ServerThread, create_app
from dagengine.orchestrator import Event, Orchestrator
from dagengine.tracing import (
    RunTracer,
    attach_tracing,
    current_trace_context,
    inherited_trace_context,
    node_span,
    run_trace_context,
    with_trace_context,
)
from dagengine.triggers import HTTPTrigger
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode
from processes import wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


class Traced:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.orch = Orchestrator(store=":memory:")
        tracer = attach_tracing(self.orch, self.provider)
        assert tracer is not None
        self.tracer = tracer

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def wait_spans(self, name: str, count: int = 1) -> list[ReadableSpan]:
        wait_for(lambda: len(self.named(name)) >= count, f"{count} span(s) {name!r}")
        return self.named(name)

    def close(self) -> None:
        self.tracer.detach()
        self.orch.stop()


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.close()


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_span_per_run_and_per_node_attempt(traced: Traced) -> None:
    spec = {
        "nodes": [
            {"id": "a", "lua": "return {}"},
            {
                "id": "flaky",
                "deps": ["a"],
                "retries": 1,
                "retry_backoff": {"initial": 0.01},
                "lua": "if ctx.attempt == 1 then error('first try') end return {}",
            },
        ]
    }
    traced.orch.register_workflow("etl", "1.2.0", spec)
    result = traced.orch.execute_workflow("etl", {})
    (run,) = traced.wait_spans("run etl")
    flaky = traced.wait_spans("node flaky", 2)
    (a,) = traced.named("node a")
    assert result.run_id == _attrs(run)["dagengine.run_id"]
    assert _attrs(run)["dagengine.workflow"] == "etl"
    assert _attrs(run)["dagengine.version"] == "1.2.0"
    assert _attrs(run)["dagengine.engine"]
    assert run.status.status_code is StatusCode.OK
    for node in (a, *flaky):
        assert node.parent is not None
        assert node.parent.span_id == run.context.span_id
        assert node.context.trace_id == run.context.trace_id
        assert (node.start_time or 0) >= (run.start_time or 0)
        assert (node.end_time or 0) <= (run.end_time or 0)
    first, second = sorted(flaky, key=lambda s: _attrs(s)["dagengine.attempt"])
    assert [_attrs(first)["dagengine.attempt"], _attrs(second)["dagengine.attempt"]] == [1, 2]
    assert first.status.status_code is StatusCode.ERROR
    assert "first try" in (first.status.description or "")
    assert second.status.status_code is StatusCode.OK
    assert _attrs(a)["dagengine.node"] == "a"


def test_a_failed_run_is_an_error_span(traced: Traced) -> None:
    traced.orch.register_workflow("bad", "1.0.0", {"nodes": [{"id": "x", "lua": "error('no')"}]})
    traced.orch.execute_workflow("bad", {})
    (run,) = traced.wait_spans("run bad")
    assert run.status.status_code is StatusCode.ERROR


def test_an_http_request_s_traceparent_is_the_run_s_parent(traced: Traced) -> None:
    traced.orch.register_workflow("one", "1.0.0", {"nodes": [{"id": "a", "lua": "return {}"}]})
    hook = HTTPTrigger("hook", "/hooks/one", "one", mode="async")
    app = create_app(traced.orch, triggers=[hook], metrics=False)
    hook.start(traced.orch)
    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            headers = {"traceparent": TRACEPARENT}
            assert client.post("/workflows/one/runs", json={}, headers=headers).status_code == 202
            assert client.post("/hooks/one", json={}, headers=headers).status_code == 202
            assert client.post("/workflows/one/runs", json={}).status_code == 202
            bad = {"traceparent": "00-not-a-trace-01"}
            assert client.post("/workflows/one/runs", json={}, headers=bad).status_code == 202
    finally:
        hook.stop()
        server.stop()
        app.state.api.close()
    runs = traced.wait_spans("run one", 4)
    children = [s for s in runs if s.context.trace_id == int(TRACE_ID, 16)]
    assert len(children) == 2
    for span in children:
        assert span.parent is not None
        assert span.parent.span_id == int(PARENT_SPAN, 16)
        assert span.parent.is_remote
    roots = [s for s in runs if s not in children]
    assert all(s.parent is None for s in roots)


def test_a_sub_workflow_run_is_a_child_of_its_parent_node(traced: Traced) -> None:
    child = {"nodes": [{"id": "echo", "lua": "return {x = inputs.x}"}]}
    parent = {
        "nodes": [
            {"id": "prep", "lua": "return {}"},
            {"id": "sub", "deps": ["prep"], "workflow": "child@^1.0"},
        ]
    }
    traced.orch.register_workflow("child", "1.0.0", child)
    traced.orch.register_workflow("parent", "1.0.0", parent)
    traced.orch.execute_workflow("parent", {"x": 1})
    (parent_run,) = traced.wait_spans("run parent")
    (child_run,) = traced.wait_spans("run child")
    (sub,) = traced.named("node sub")
    assert child_run.parent is not None
    assert child_run.parent.span_id == sub.context.span_id
    assert child_run.context.trace_id == parent_run.context.trace_id


def test_off_without_a_tracer_provider() -> None:
    with Orchestrator(store=":memory:") as orch:
        assert attach_tracing(orch) is None  # the global provider is the API's no-op proxy


def test_trace_context_is_bound_only_for_the_wrapped_call() -> None:
    seen = with_trace_context(
        {"traceparent": TRACEPARENT, "tracestate": "k=v"}, current_trace_context
    )()
    assert seen == {"traceparent": TRACEPARENT, "tracestate": "k=v"}
    assert current_trace_context() is None
    assert with_trace_context({"traceparent": "garbage"}, current_trace_context)() is None


def test_a_child_queued_before_its_parent_node_s_start_still_hangs_under_it() -> None:
    # Node events come from engines in bursts: the child's run.queued can come first.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = RunTracer(provider)
    feed: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("run.queued", "p", None, {"version": "1.0.0"}),
        (
            "run.queued",
            "c",
            None,
            {"version": "1.0.0", "parent_run_id": "p", "parent_node_id": "sub"},
        ),
        ("node.started", "p", "sub", {"attempt": 1, "node_attempt": 1}),
        ("run.completed", "c", None, {}),
        ("node.succeeded", "p", "sub", {"attempt": 1, "node_attempt": 1}),
        ("run.completed", "p", None, {}),
    ]
    for seq, (kind, run_id, node_id, data) in enumerate(feed, 1):
        wf = "child" if run_id == "c" else "parent"
        tracer.observe(Event(seq, 1000.0 + seq, kind, "info", wf, run_id, node_id, "e1", data))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"run parent", "run child", "node sub"}
    sub, child = spans["node sub"], spans["run child"]
    assert child.parent is not None
    assert child.parent.span_id == sub.context.span_id
    assert _attrs(sub)["dagengine.attempt"] == 1
    assert _attrs(sub)["dagengine.engine"] == "e1"


def test_an_engine_runs_a_node_attempt_in_a_child_span_of_the_runs_trace_context() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from opentelemetry import trace

    carrier = {"traceparent": TRACEPARENT, "tracestate": "k=v"}
    with node_span(carrier, "r1", "n", 2, tracer_provider=provider) as span:
        inside = trace.get_current_span()
        assert inside is span
    assert trace.get_current_span().get_span_context().is_valid is False  # detached after
    (done,) = exporter.get_finished_spans()
    assert done.name == "execute n"
    assert done.parent is not None
    assert f"{done.parent.span_id:016x}" == PARENT_SPAN
    assert f"{done.context.trace_id:032x}" == TRACE_ID
    assert done.context.trace_state.get("k") == "v"
    assert _attrs(done) == {"dagengine.run_id": "r1", "dagengine.node": "n", "dagengine.attempt": 2}


def test_an_engine_without_a_tracer_provider_runs_the_node_in_the_callers_context() -> None:
    from opentelemetry import trace

    # The global provider is the API's proxy here: no span, but the caller's context is current.
    with node_span({"traceparent": TRACEPARENT}, "r1", "n", 1):
        context = trace.get_current_span().get_span_context()
        assert (f"{context.trace_id:032x}", f"{context.span_id:016x}") == (TRACE_ID, PARENT_SPAN)
    for carrier in (None, {}, {"traceparent": "00-bad"}):
        with node_span(carrier, "r1", "n", 1):
            assert not trace.get_current_span().get_span_context().is_valid


def test_a_sub_workflow_inherits_its_parent_runs_trace_context() -> None:
    parent = {"traceparent": TRACEPARENT}
    assert run_trace_context() is None
    with inherited_trace_context(parent):
        assert run_trace_context() == parent
        # A request's own context comes first; it alone goes into run.queued.
        other = f"00-{'1' * 32}-{'2' * 16}-01"
        assert with_trace_context({"traceparent": other}, run_trace_context)() == {
            "traceparent": other
        }
        assert current_trace_context() is None
    assert run_trace_context() is None
