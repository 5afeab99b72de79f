"""Three ``dagengine serve --replica`` processes on one PostgreSQL database: a cron trigger
firing every second starts exactly one run per fire time across them, and a run submitted
through one replica's HTTP API is followed through another's ``GET /runs/{id}/events``."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pg import query
from processes import wait_for

pytestmark = pytest.mark.integration

SPEC = {
    "id": "tick",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return {t = inputs._trigger_time or 'none'}"},
        {"id": "b", "deps": ["a"], "lua": "return {n = 1}"},
    ],
}


class Replica:
    """``dagengine serve --replica`` in a subprocess (port 0: its URL from its first line)."""

    def __init__(self, folder: Path, url: str) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagengine", "serve", "--replica", "--config",
             str(folder / "serve.yaml"), "--workflows", str(folder / "workflows"),
             "--store", url, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=folder,
            env={**os.environ, "DAGENGINE_LEASE_TTL": "2"},
        )  # fmt: skip
        line: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        if not line or "listening on" not in line[0]:
            self.stop()
            self._stderr.seek(0)
            raise AssertionError(f"serve --replica did not start: {line} {self._stderr.read()}")
        self.url = line[0].split()[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "tick.yaml").write_text(yaml.safe_dump(SPEC))
    config = {
        "triggers": [
            {"type": "cron", "id": "every-second", "workflow_id": "tick", "schedule": "* * * * * *"}
        ]
    }
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    started: list[Replica] = []
    try:
        for _ in range(3):
            started.append(Replica(tmp_path, pg_url))
        yield started
    finally:
        for replica in started:
            replica.stop()


def _fires(url: str) -> collections.Counter[str]:
    rows = query(url, "SELECT inputs FROM runs WHERE workflow_id = 'tick'")
    times = (json.loads(inputs).get("_trigger_time") for (inputs,) in rows)
    return collections.Counter(t for t in times if t is not None)


def test_cron_every_second_fires_once_per_time_across_three_replicas(
    pg_url: str, cluster: list[Replica]
) -> None:
    # Every replica is up: count the fire times from here on.
    before = set(_fires(pg_url))
    wait_for(lambda: len(set(_fires(pg_url)) - before) >= 6, "six fire times", timeout=60)
    for replica in cluster:
        replica.stop()  # no fire from here on
    fires = _fires(pg_url)
    new = sorted(set(fires) - before)
    assert [t for t, n in fires.items() if n != 1] == []  # exactly one run per fire time
    # and no fire time skipped between the first and the last one seen.
    seconds = [int(t[17:19]) + 60 * int(t[14:16]) for t in new]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), new
    owners = query(pg_url, "SELECT count(DISTINCT owner) FROM trigger_fires")[0][0]
    print(f"\n{len(fires)} cron fire times, each one run; fired by {owners} replica(s)")


def test_a_run_submitted_on_one_replica_streams_from_another(cluster: list[Replica]) -> None:
    a, b = cluster[0], cluster[1]
    request = urllib.request.Request(
        f"{a.url}/workflows/tick/runs",
        data=json.dumps({"inputs": {}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        run_id = json.loads(response.read())["run_id"]
    events: list[str] = []
    with urllib.request.urlopen(f"{b.url}/runs/{run_id}/events?after=0", timeout=30) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("event: "):
                events.append(line[len("event: ") :])
            if events[-1:] == ["run.completed"]:
                break
    assert events[0] == "run.queued"
    assert events[-1] == "run.completed"
    assert events.count("node.succeeded") == 2
    with urllib.request.urlopen(f"{b.url}/runs/{run_id}", timeout=10) as response:
        assert json.loads(response.read())["status"] == "succeeded"
