"""A mapped node through the orchestrator: its items' outputs are checkpointed like nodes'
(``square[3]``), so a run resumed on another engine after the first one was killed mid-map
does not run its completed items again."""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine import Orchestrator, RunStatus
from processes import EngineProcess, wait_for

pytestmark = pytest.mark.integration

MAPPED: dict[str, Any] = {
    "id": "mapped",
    "version": "1.0.0",
    "nodes": [
        {"id": "rows", "lua": "return {rows = {1, 2, 3, 4}}"},
        {
            "id": "work",
            "deps": ["rows"],
            "python": "map_tasks:hold_item",
            "map": "results.rows.rows",
            # One at a time: items 0-2 are done when item 3 (the held one) starts.
            "max_parallel": 1,
        },
        {
            "id": "sum",
            "deps": ["work"],
            "lua": "local s = 0 for _, p in ipairs(results.work) do s = s + p.v end return {s = s}",
        },
    ],
}


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[EngineProcess]]:
    env = {
        "DAGENGINE_TEST_LEDGER": str(tmp_path / "ledger.txt"),
        "DAGENGINE_TEST_RELEASE": str(tmp_path / "release"),
    }
    (tmp_path / "ledger.txt").touch()
    started = [EngineProcess("--engine-id", f"map-{i}", env=env) for i in range(2)]
    try:
        yield started
    finally:
        for engine in started:
            engine.kill()


def test_a_mapped_node_resumed_on_another_engine_keeps_its_completed_items(
    tmp_path: Path, engines: list[EngineProcess]
) -> None:
    ledger = tmp_path / "ledger.txt"
    orch = Orchestrator(store=str(tmp_path / "store.db"), embedded_engine=False)
    try:
        for proc in engines:
            orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("mapped", "1.0.0", MAPPED)
        handle = orch.execute_workflow("mapped", {}, wait=False)
        wait_for(lambda: " work[3] started" in ledger.read_text(), "item 3 to start", timeout=60)
        done = {"rows", "work[0]", "work[1]", "work[2]"}
        # The item outputs recorded so far are the checkpoint the re-dispatch resumes from.
        wait_for(
            lambda: (
                done
                <= {
                    ev.node_id
                    for ev in orch.store.events(run_id=handle.run_id, types=["node.succeeded"])
                }
            ),
            "the completed items to be recorded",
            timeout=30,
        )
        assert done <= set(orch.store.node_outputs(handle.run_id))
        (mapped,) = orch.store.events(run_id=handle.run_id, types=["node.mapped"])
        assert (mapped.node_id, mapped.data["count"]) == ("work", 4)
        victim = next(p for p in engines if orch.engines()[p.engine_id].active > 0)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        (tmp_path / "release").touch()
        result = handle.result(timeout=120)
        assert orch.store.events(run_id=handle.run_id, types=["run.redispatched"])
        assert result.status is RunStatus.SUCCEEDED, result.error
        assert result.outputs["work"] == [{"v": 10}, {"v": 20}, {"v": 30}, {"v": 40}]
        assert result.outputs["sum"] == {"s": 100}
    finally:
        orch.stop()
    counts = collections.Counter(ledger.read_text().splitlines())
    run = handle.run_id
    # Completed items were not run again; the held item ran again on the second engine.
    for i in range(3):
        assert counts[f"{run} work[{i}]"] == 1
    assert counts[f"{run} work[3] started"] == 2
    assert counts[f"{run} work[3]"] == 1
