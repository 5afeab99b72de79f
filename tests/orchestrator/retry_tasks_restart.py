"""A Python node for the retry-across-restart test (named by import path, so the workflow
persists in the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagengine import NodeContext
from orch_tasks import count


def needs_gate(ctx: NodeContext) -> dict[str, Any]:
    """Fail unless the file named by the run input ``gate`` exists; else count the run."""
    if not Path(ctx.inputs["gate"]).exists():
        raise RuntimeError("no gate yet")
    return count(ctx)
