"""`kill -9` of `dagengine serve` with ~200 runs of a Python-node workflow in flight, then a
restart with the same command, from a folder other than the workflows' (their modules are
importable only through `--workflows`): nothing acknowledged is lost, nothing finishes twice,
and no node whose output was stored runs again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from dagengine.orchestrator.store.retention import outputs_kept_in_results
from processes import wait_for

pytestmark = pytest.mark.integration

RUNS = 200

SPEC = """
id: crashy
version: 1.0.0
nodes:
  - {id: a, python: "crashtasks:step"}
  - {id: b, deps: [a], python: "crashtasks:step"}
  - {id: c, deps: [b], python: "crashtasks:step"}
"""

TASKS = """
import os
import time

def step(ctx):
    # One line per execution, appended whole (O_APPEND): who ran which node of which run.
    line = f"{os.getpid()} {ctx.run_id} {ctx.node_id}\\n".encode()
    fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    time.sleep(0.02)
    parent = {"a": None, "b": "a", "c": "b"}[ctx.node_id]
    depth = ctx.results[parent]["depth"] + 1 if parent else 1
    return {"depth": depth, "n": ctx.inputs["n"]}
"""


def _serve(
    cwd: Path, folder: Path, store: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagengine",
            "serve",
            "--workflows",
            str(folder),
            "--store",
            str(store),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        cwd=cwd,
        env=env,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    if not line or "listening on" not in line[0]:
        proc.kill()
        proc.wait()
        raise AssertionError(f"serve did not start: {line}")
    return proc, line[0].split()[-1]


def _executions(log: Path) -> list[tuple[int, str, str]]:
    rows = []
    for text in log.read_text().splitlines():
        pid, run_id, node_id = text.split()
        rows.append((int(pid), run_id, node_id))
    return rows


def test_kill_9_with_runs_in_flight_then_restart_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "crashy.yaml").write_text(SPEC.lstrip())
    (folder / "crashtasks.py").write_text(TASKS.lstrip())
    elsewhere = tmp_path / "cwd"  # not the workflows folder: its modules are not on the path
    elsewhere.mkdir()
    store = tmp_path / "state" / "dagengine.db"
    log = tmp_path / "executions.log"
    env = {**os.environ, "CRASH_LOG": str(log)}
    env.pop("PYTHONPATH", None)

    proc, url = _serve(elsewhere, folder, store, env)
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in range(RUNS):
                response = client.post("/workflows/crashy/runs", json={"inputs": {"n": n}})
                assert response.status_code == 202, response.text
                acknowledged.append(response.json()["run_id"])
        # Some runs done, most in flight or queued: kill it without warning.
        wait_for(
            lambda: log.exists() and len(log.read_text().splitlines()) >= RUNS // 2,
            "the runs to get going",
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    first_pid = proc.pid

    # What the store holds as done at the crash: these nodes must never run again.
    with sqlite3.connect(store) as db:
        # (A succeeded run's outputs may be kept in its result only: read both forms.)
        rows = db.execute("SELECT run_id, node_id, output FROM node_outputs").fetchall()
        results = db.execute("SELECT run_id, result FROM runs WHERE result IS NOT NULL")
        stored = {
            (run_id, node_id)
            for run_id, node_id, _ in rows + outputs_kept_in_results(rows, results)
        }
        resumed = {
            run_id
            for (run_id,) in db.execute(
                "SELECT run_id FROM runs WHERE status IN ('queued', 'running')"
            )
        }
        unfinished = len(resumed)
    db.close()
    assert stored, "no node output was stored before the crash"
    assert unfinished > 0, "every run had finished before the crash: nothing was tested"

    proc, url = _serve(elsewhere, folder, store, env)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                runs = client.get("/runs", params={"workflow_id": "crashy", "limit": 1000}).json()[
                    "runs"
                ]
                if all(r["status"] not in ("queued", "running") for r in runs):
                    break
                assert time.monotonic() < deadline, Counter(r["status"] for r in runs)
                time.sleep(0.2)
            statuses = {r["run_id"]: r["status"] for r in runs}
            # Nothing lost: every acknowledged run is there and succeeded.
            assert sorted(statuses) == sorted(acknowledged)
            failed = {k: v for k, v in statuses.items() if v != "succeeded"}
            assert not failed, (
                f"{len(failed)} runs did not succeed, e.g. "
                f"{client.get(f'/runs/{next(iter(failed))}').json()}"
            )
            for run_id in acknowledged[:: RUNS // 10]:
                run = client.get(f"/runs/{run_id}").json()
                assert run["outputs"]["c"]["depth"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

    # Nothing finished twice: one end event per run.
    with sqlite3.connect(store) as db:
        ends = Counter(
            run_id
            for (run_id,) in db.execute(
                "SELECT run_id FROM events WHERE type IN ('run.completed', 'run.failed', "
                "'run.cancelled')"
            )
        )
    db.close()
    # (Not every run need have one: an event published just before the kill may be lost,
    # as documented; a run's end record never is.)
    assert set(ends) <= set(acknowledged)
    assert resumed <= set(ends)
    assert max(ends.values()) == 1, [k for k, v in ends.items() if v > 1][:5]
    # No node whose output was stored before the crash ran after it.
    again = [
        (run_id, node_id)
        for pid, run_id, node_id in _executions(log)
        if pid != first_pid and (run_id, node_id) in stored
    ]
    assert not again, f"{len(again)} completed nodes ran again, e.g. {again[:5]}"
    # Every node of every run ran (once at least): the resumed runs went on where they were.
    executed = {(run_id, node_id) for _, run_id, node_id in _executions(log)}
    assert executed == {(r, n) for r in acknowledged for n in "abc"}
    print(json.dumps({"stored_at_crash": len(stored), "unfinished_at_crash": unfinished}))
