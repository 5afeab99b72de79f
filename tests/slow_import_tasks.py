"""Node functions in a module that takes a second to import: an engine preparing a run that
names one is busy that long before the run is registered (``tests/test_engine_session.py``)."""

from __future__ import annotations

import time
from typing import Any

from dagengine import NodeContext

time.sleep(1.0)


def hold(ctx: NodeContext) -> dict[str, Any]:
    """Run until cancelled (at most 30 s)."""
    end = time.monotonic() + 30
    while time.monotonic() < end and not ctx.cancelled:
        time.sleep(0.01)
    return {"cancelled": ctx.cancelled}
