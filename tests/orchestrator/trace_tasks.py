"""A Python node that reports the trace context it runs in (importable by engine processes)."""

from __future__ import annotations

from dagengine import NodeContext


def whoami(ctx: NodeContext) -> dict[str, str]:
    """The current span's trace and span ids (all zeros outside any trace)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
