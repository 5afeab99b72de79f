"""Node functions that workflows sent to engine processes name by import path
(``engine_tasks:add``); the tests put this directory on the engines' PYTHONPATH."""

from __future__ import annotations

import os
import time
from typing import Any

from dagengine import NodeContext


def add(ctx: NodeContext) -> dict[str, Any]:
    """Add the run inputs ``a`` and ``b``."""
    return {"sum": ctx.inputs["a"] + ctx.inputs["b"]}


def double(ctx: NodeContext) -> dict[str, Any]:
    """Double every parent's ``value`` (or ``sum``)."""
    total = sum(r.get("value", r.get("sum", 0)) for r in ctx.results.values())
    return {"value": 2 * total, "pid": os.getpid()}


def sleepy(ctx: NodeContext) -> dict[str, Any]:
    """Take ``inputs.seconds`` (default 1) of wall time, stopping early when cancelled."""
    seconds = float(ctx.inputs.get("seconds", 1.0))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ctx.cancelled:
            return {"slept": False}
        time.sleep(0.01)
    return {"slept": True}


def wait_for_file(ctx: NodeContext) -> dict[str, Any]:
    """Wait until the file ``inputs.path`` exists (at most 60 s), stopping when cancelled:
    the test decides when this node ends."""
    end = time.monotonic() + 60
    while time.monotonic() < end and not ctx.cancelled:
        if os.path.exists(ctx.inputs["path"]):
            return {"released": True}
        time.sleep(0.01)
    return {"released": False}


class Greeter:
    """An executor class: instantiated once per engine, ``execute`` called per node."""

    def execute(self, ctx: NodeContext) -> dict[str, Any]:
        return {"greeting": f"hello {ctx.inputs.get('name', 'world')}"}
