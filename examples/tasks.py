"""Python nodes of ``examples/pipeline.yaml``.

Each task is a plain function of the node context: ``ctx.inputs`` are the run's inputs and
``ctx.results`` the outputs of the node's dependencies. A task returns a dict (or ``None``).
"""

from __future__ import annotations

import statistics
from typing import Any

from dagengine import NodeContext


def stats(ctx: NodeContext) -> dict[str, Any]:
    """Summary statistics of the extracted rows."""
    values = [row["value"] for row in ctx.results["extract"]["rows"]]
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def load(ctx: NodeContext) -> dict[str, Any]:
    """Combine both branches into the report a real pipeline would write somewhere."""
    scaled = ctx.results["scale"]["values"]
    summary = ctx.results["stats"]
    return {
        "factor": ctx.inputs.get("factor", 1),
        "rows": summary["count"],
        "total": sum(scaled),
        "scaled_mean": statistics.fmean(scaled),
        "source_mean": summary["mean"],
    }
