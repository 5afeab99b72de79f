"""An executor that records what triggers ask of it, with runs the test finishes by hand."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any


class FakeRun:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._done = threading.Event()
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self) -> None:
        self._done.set()

    def result(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def cancel(self) -> bool:
        self.cancelled = True
        self._done.set()
        return True


class FakeExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []
        self.runs: list[FakeRun] = []
        self.lock = threading.Lock()

    def execute_workflow(
        self,
        workflow_id: str,
        inputs: Mapping[str, Any] | None = None,
        version: str | None = None,
        wait: bool = True,
    ) -> FakeRun:
        assert wait is False
        with self.lock:
            run = FakeRun(f"run-{len(self.runs) + 1}")
            self.calls.append((workflow_id, dict(inputs or {}), version))
            self.runs.append(run)
        return run

    def times(self) -> list[str]:
        return [inputs["_trigger_time"] for _, inputs, _ in self.calls]
