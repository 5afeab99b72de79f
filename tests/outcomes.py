"""Narrowing what ``Orchestrator.execute_workflow`` returns: a ``RunResult`` when it waited
for the run, a ``RunHandle`` when it did not (``wait=False``)."""

from __future__ import annotations

from dagengine import RunResult
from dagengine.orchestrator import RunHandle


def handle(value: RunResult | RunHandle) -> RunHandle:
    """``value``, which must be a handle (the run was only started)."""
    assert isinstance(value, RunHandle), value
    return value


def result(value: RunResult | RunHandle) -> RunResult:
    """``value``, which must be a result (the call waited for the run's end)."""
    assert isinstance(value, RunResult), value
    return value
