"""OpenTelemetry traces of runs (extra ``dagengine[otel]``): a span per run and one per node
attempt, built from the orchestrator's event bus with the events' own timestamps.

- ``run <workflow>``: from ``run.queued`` to the run's end; attributes ``dagengine.workflow``,
  ``dagengine.version``, ``dagengine.run_id``, ``dagengine.engine`` (of its last start).
- ``node <id>``: from ``node.started`` to that attempt's end (succeeded, failed, retrying,
  cancelled), a child of its run's span; attributes ``dagengine.node``,
  ``dagengine.attempt`` (the node's attempt), ``dagengine.run_attempt``, ``dagengine.engine``.
- A run submitted with a W3C ``traceparent`` (the REST API and HTTP triggers read it from the
  request, :func:`with_trace_context`; the orchestrator keeps it in the run's ``run.queued``
  event as ``trace``) is a child of the caller's span; a sub-workflow's run is a child of the
  span of the parent node that started it.

- On an engine, each Python node attempt of a run that came with a trace context (the
  orchestrator sends the run's: the caller's, or for a sub-workflow its parent run's; the
  ``trace_context`` of the ``RunRequest``, or ``traceparent`` gRPC metadata on a ``Run``
  call) runs inside ``execute <node>`` (:func:`node_span`), a child of that context, so the
  node's own spans and the calls it makes are part of the caller's trace. With no tracer
  provider set up in the engine process, the node still runs in the caller's context.

Without the ``opentelemetry`` packages nothing here imports them and :func:`attach_tracing`
returns ``None``: tracing is off and free. With them but no tracer provider set up, it is off
too; with one, spans go to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = [
    "RunTracer",
    "attach_tracing",
    "available",
    "current_trace_context",
    "inherited_context",
    "inherited_trace_context",
    "node_span",
    "run_trace_context",
    "valid_trace_context",
    "with_trace_context",
]

T = TypeVar("T")
# version 00, 32-hex trace id, 16-hex parent id, 2-hex flags (W3C Trace Context).
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# Spans waiting for their end are bounded: a run abandoned by a stopped orchestrator must not
# hold memory forever.
_MAX_OPEN = 100_000
_NODE_ENDS = {
    "node.succeeded": "ok",
    "node.failed": "error",
    "node.retrying": "error",
    "node.cancelled": "unset",
}
_RUN_ENDS = {"run.completed": "ok", "run.failed": "error", "run.cancelled": "unset"}

# The W3C trace context of the request being served, set by the API and HTTP triggers around
# their call into the orchestrator, which copies it into the run's ``run.queued`` event.
_trace_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "dagengine_trace_context", default=None
)
# The trace context a sub-workflow's run inherits from its parent run (engines only).
_inherited: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "dagengine_inherited_trace_context", default=None
)


@functools.cache
def available() -> bool:
    """Whether the OpenTelemetry API is installed."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ImportError:
        return False


def current_trace_context() -> dict[str, str] | None:
    """The ``traceparent``/``tracestate`` of the request being served, if it sent one."""
    return _trace_context.get()


def inherited_context() -> dict[str, str] | None:
    """The trace context bound by :func:`inherited_trace_context`, if any."""
    return _inherited.get()


def run_trace_context() -> dict[str, str] | None:
    """The trace context a run submitted now goes to engines with: the request's
    (:func:`current_trace_context`), else the one a sub-workflow inherits from its parent
    run (:func:`inherited_trace_context`)."""
    return _trace_context.get() or _inherited.get()


@contextlib.contextmanager
def inherited_trace_context(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Within the block, runs submitted go to engines with ``carrier`` (a sub-workflow's
    parent run's trace context) unless a request's own is current. Unlike a request's, it
    is not put in ``run.queued``: the child's run span hangs under its parent node's."""
    token = _inherited.set(dict(carrier) if carrier else None)
    try:
        yield
    finally:
        _inherited.reset(token)


def with_trace_context(headers: Mapping[str, str], func: Callable[..., T]) -> Callable[..., T]:
    """``func`` wrapped to run with the request's W3C trace context (lower-case ``headers``)
    as :func:`current_trace_context`, on whatever thread calls it; ``func`` itself when the
    request sent no valid ``traceparent``."""
    carrier = valid_trace_context(headers)
    if carrier is None:
        return func

    def call(*args: Any, **kwargs: Any) -> T:
        token = _trace_context.set(carrier)
        try:
            return func(*args, **kwargs)
        finally:
            _trace_context.reset(token)

    return call


def valid_trace_context(carrier: Mapping[str, str] | None) -> dict[str, str] | None:
    """``carrier``'s ``traceparent`` (and ``tracestate``, when short enough) if it holds a
    valid W3C ``traceparent``, else ``None``."""
    if not carrier:
        return None
    parent = carrier.get("traceparent", "")
    if not _TRACEPARENT.fullmatch(parent):
        return None
    valid = {"traceparent": parent}
    state = carrier.get("tracestate")
    if state and len(state) <= 512:
        valid["tracestate"] = state
    return valid


_NO_SPAN = contextlib.nullcontext()


def node_span(
    carrier: Mapping[str, str] | None,
    run_id: str,
    node_id: str,
    attempt: int,
    tracer_provider: Any = None,
) -> contextlib.AbstractContextManager[object]:
    """What an engine runs a node attempt in: ``execute <node_id>``, a span whose parent is
    the run's W3C trace context ``carrier``, current for the attempt (a no-op when there is
    no valid carrier or no OpenTelemetry). Without a tracer provider set up (``None``: the
    global one) no span is recorded, but the carrier's context is still current."""
    valid = valid_trace_context(carrier)
    if valid is None or not available():
        return _NO_SPAN
    return _node_span(valid, run_id, node_id, attempt, tracer_provider)


@contextlib.contextmanager
def _node_span(
    carrier: dict[str, str], run_id: str, node_id: str, attempt: int, tracer_provider: Any
) -> Iterator[object]:
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(carrier)
    provider = tracer_provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        token = context.attach(parent)  # no spans here: the caller's context, unchanged
        try:
            yield trace.get_current_span(parent)
        finally:
            context.detach(token)
        return
    tracer = trace.get_tracer("dagengine.engine", tracer_provider=provider)
    attributes: dict[str, str | int] = {
        "dagengine.run_id": run_id,
        "dagengine.node": node_id,
        "dagengine.attempt": attempt,
    }
    with tracer.start_as_current_span(
        f"execute {node_id}", context=parent, attributes=attributes
    ) as span:
        yield span


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class _Bounded(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any) -> None:
        if len(self) >= _MAX_OPEN:
            self.popitem(last=False)
        self[key] = value


class RunTracer:
    """Follows an orchestrator's events and turns them into spans (see the module)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = trace.get_tracer("dagengine", tracer_provider=tracer_provider)
        self._runs = _Bounded()  # run_id -> span
        self._nodes = _Bounded()  # (run_id, node_id) -> span
        self._early: set[tuple[str, str]] = set()  # node spans opened before their start
        self._follower: Any = None

    def attach(self, orchestrator: Any) -> RunTracer:
        """Follow ``orchestrator.events`` from now on, on a thread of its own."""
        self._follower = orchestrator.events.follow(self.observe, name="dagengine-tracing")
        return self

    def detach(self) -> None:
        if self._follower is not None:
            self._follower.close()

    def observe(self, event: Any) -> None:
        """Turn one event into a span's start, end or annotation."""
        kind = event.type
        run_id = event.run_id
        if run_id is None:
            return
        data = event.data
        if kind == "run.queued":
            self._start_run(event, data)
        elif kind == "run.started":
            span = self._runs.get(run_id)
            if span is not None and event.engine_id:
                span.set_attribute("dagengine.engine", event.engine_id)
                span.add_event(
                    "started", {"dagengine.engine": event.engine_id}, timestamp=_ns(event.time)
                )
        elif kind == "run.redispatched":
            span = self._runs.get(run_id)
            if span is not None:
                span.add_event("redispatched", timestamp=_ns(event.time))
        elif kind in _RUN_ENDS:
            span = self._runs.pop(run_id, None)
            if span is not None:
                self._end(span, _RUN_ENDS[kind], data, event.time)
        elif kind == "node.started" and event.node_id:
            self._start_node(event, data)
        elif kind in _NODE_ENDS and event.node_id:
            self._early.discard((run_id, event.node_id))
            span = self._nodes.pop((run_id, event.node_id), None)
            if span is not None:
                self._end(span, _NODE_ENDS[kind], data, event.time)

    def _start_run(self, event: Any, data: Mapping[str, Any]) -> None:
        trace = self._trace
        parent = None
        carrier = data.get("trace")
        if isinstance(carrier, Mapping):
            from opentelemetry import propagate

            parent = propagate.extract(dict(carrier))
        parent_run, parent_node = data.get("parent_run_id"), data.get("parent_node_id")
        if parent is None and parent_run and parent_node:
            owner = self._nodes.get((parent_run, parent_node))
            if owner is None and parent_run in self._runs:
                # The parent node's events come from its engine in bursts: its start can
                # arrive after the child it started is queued. Its span is opened here and
                # taken over by that start (its start time is then the child's queueing).
                owner = self._open_node(parent_run, parent_node, event.workflow_id, event.time)
                self._early.add((parent_run, parent_node))
            if owner is not None:
                parent = trace.set_span_in_context(owner)
        span = self._tracer.start_span(
            f"run {event.workflow_id}",
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            start_time=_ns(event.time),
            attributes={
                "dagengine.workflow": event.workflow_id or "",
                "dagengine.version": str(data.get("version", "")),
                "dagengine.run_id": event.run_id,
            },
        )
        self._runs.put(event.run_id, span)

    def _open_node(self, run_id: str, node_id: str, workflow_id: str | None, when: float) -> Any:
        trace = self._trace
        run_span = self._runs.get(run_id)
        context = trace.set_span_in_context(run_span) if run_span is not None else None
        span = self._tracer.start_span(
            f"node {node_id}",
            context=context,
            start_time=_ns(when),
            attributes={
                "dagengine.workflow": workflow_id or "",
                "dagengine.run_id": run_id,
                "dagengine.node": node_id,
            },
        )
        self._nodes.put((run_id, node_id), span)
        return span

    def _start_node(self, event: Any, data: Mapping[str, Any]) -> None:
        key = (event.run_id, event.node_id)
        if key in self._early:  # opened by a sub-workflow it started: this is its start
            self._early.discard(key)
            span = self._nodes.get(key)
        else:
            previous = self._nodes.pop(key, None)
            if previous is not None:  # a start without an end (engine lost): close it first
                previous.end(end_time=_ns(event.time))
            span = None
        if span is None:
            span = self._open_node(event.run_id, event.node_id, event.workflow_id, event.time)
        span.set_attribute("dagengine.attempt", int(data.get("node_attempt", 1) or 1))
        span.set_attribute("dagengine.run_attempt", int(data.get("attempt", 1) or 1))
        if event.engine_id:
            span.set_attribute("dagengine.engine", event.engine_id)

    def _end(self, span: Any, outcome: str, data: Mapping[str, Any], when: float) -> None:
        trace = self._trace
        if outcome == "ok":
            span.set_status(trace.Status(trace.StatusCode.OK))
        elif outcome == "error":
            error = data.get("error")
            message = ""
            if isinstance(error, Mapping):
                message = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
            elif error:
                message = str(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, message or None))
        span.end(end_time=_ns(when))


def attach_tracing(orchestrator: Any, tracer_provider: Any = None) -> RunTracer | None:
    """Trace ``orchestrator``'s runs to ``tracer_provider`` (default: the global one). Returns
    ``None``, and follows nothing, when OpenTelemetry is not installed or no provider is set
    up (the global one is still the API's no-op proxy): tracing then costs nothing."""
    if not available():
        return None
    from opentelemetry import trace

    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
        if isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    return RunTracer(tracer_provider).attach(orchestrator)
