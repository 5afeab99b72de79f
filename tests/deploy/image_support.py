"""What the container image tests share (tests/deploy/test_images*.py): the images, built
once per session (deploy/images/build.sh and build-base.sh, or ``DAGENGINE_TEST_IMAGE``), a
:class:`Cluster` of containers reached through the orchestrator's HTTP API, and readers of
what the containers recorded (the ledger of node executions, the stores).

The fixtures are session-scoped and made available to every test module by conftest.py: the
image is built once whichever of the modules run.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docker_lab import (
    HTTP_PORT,
    REPO_ROOT,
    Container,
    EventLog,
    Lab,
    docker,
    docker_problem,
    http,
    wait_until,
)

BUILD_SCRIPT = REPO_ROOT / "deploy" / "images" / "build.sh"
BASE_SCRIPT = REPO_ROOT / "deploy" / "images" / "build-base.sh"
IMAGE = "dagengine:test"
POSTGRES_IMAGE = "dagengine-postgres:bookworm"
#: The workflow's Python nodes, which write the ledger (``c`` is Lua).
LEDGER_NODES = ("a", "b")
ENGINES = ("e1", "e2", "e3")


def figures(name: str, **values: Any) -> None:
    print(f"\n[images {name}] " + " ".join(f"{k}={v}" for k, v in values.items()))


def base_problem() -> str | None:
    """Why the debootstrapped base images cannot be built here, or ``None`` (they can, or
    they exist already)."""
    missing = [
        tag
        for tag in ("dagengine-base:bookworm", POSTGRES_IMAGE)
        if subprocess.run(
            ["docker", "image", "inspect", tag], capture_output=True, check=False
        ).returncode
        != 0
    ]
    if not missing:
        return None
    if shutil.which("debootstrap") is None:
        return f"debootstrap is not installed (apt-get install debootstrap) to build {missing}"
    if os.geteuid() != 0:
        return f"building {missing} with debootstrap needs root"
    return None


@pytest.fixture(scope="session")
def usable() -> None:
    """Skip (or fail, with ``DAGENGINE_REQUIRE_DOCKER=1``) where the images cannot be made."""
    problem = docker_problem() or base_problem()
    if problem is not None:
        if os.environ.get("DAGENGINE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"DAGENGINE_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="session")
def postgres_build(
    usable: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], Path, float]]:
    """build-base.sh making the PostgreSQL server image, started in the background beside
    build.sh (it mostly downloads and unpacks, the wheel mostly compiles). Waited for, never
    killed, at the end: debootstrap mounts /proc in its chroot."""
    log = tmp_path_factory.mktemp("postgres-image") / "build.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BASE_SCRIPT)],
            env={
                **os.environ,
                "DAGENGINE_BASE_IMAGE": POSTGRES_IMAGE,
                "DAGENGINE_BASE_PACKAGES": "postgresql-15",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, log, time.monotonic()
    finally:
        proc.wait(timeout=1100)


@pytest.fixture(scope="session")
def image(usable: None, postgres_build: object) -> str:
    """The image tag, built once by deploy/images/build.sh (or given)."""
    given = os.environ.get("DAGENGINE_TEST_IMAGE")
    if given:
        return given
    started = time.monotonic()
    done = subprocess.run(
        [str(BUILD_SCRIPT)],
        env={**os.environ, "DAGENGINE_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE))
    figures(
        "build", image=IMAGE, size_mb=round(size / 1e6), build_s=round(time.monotonic() - started)
    )
    return IMAGE


@pytest.fixture(scope="session")
def postgres_image(postgres_build: tuple[subprocess.Popen[bytes], Path, float]) -> str:
    """Debian's PostgreSQL 15 on the same debootstrapped base (build-base.sh with
    ``DAGENGINE_BASE_PACKAGES=postgresql-15``; nothing is pulled)."""
    proc, log, started = postgres_build
    code = proc.wait(timeout=1100)
    if code != 0:
        pytest.fail(f"{BASE_SCRIPT} failed (exit {code}):\n{log.read_text()[-4000:]}")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", POSTGRES_IMAGE))
    figures(
        "postgres-image",
        size_mb=round(size / 1e6),
        # From the module's start: the build runs beside build.sh and the first tests.
        waited_s=round(time.monotonic() - started),
    )
    return POSTGRES_IMAGE


@dataclass
class Cluster:
    lab: Lab
    orch: Container
    api: str
    events: EventLog
    engines: dict[str, Container]

    def submit(self, workflow_id: str, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        status, body = http(
            "POST", f"{self.api}/workflows/{workflow_id}/runs", {"inputs": inputs, **extra}
        )
        assert status in (200, 201, 202), (status, body)
        assert isinstance(body, dict)
        return body

    def submit_many(self, count: int, seconds: float) -> list[str]:
        with ThreadPoolExecutor(8) as pool:
            bodies = list(
                pool.map(lambda _: self.submit("image-ledger", {"seconds": seconds}), range(count))
            )
        return [b["run_id"] for b in bodies]

    def run(self, run_id: str) -> dict[str, Any]:
        status, body = http("GET", f"{self.api}/runs/{run_id}")
        assert status == 200, (status, body)
        assert isinstance(body, dict)
        return body

    def wait_finished(self, run_ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
        """Each run's final state, once every one has finished."""
        finished: dict[str, Any] = {}

        def done() -> bool:
            for run_id in run_ids:
                if run_id not in finished:
                    body = self.run(run_id)
                    if body["status"] in ("succeeded", "failed", "cancelled"):
                        finished[run_id] = body
            return len(finished) == len(run_ids)

        try:
            wait_until(done, f"{len(run_ids)} runs to finish", timeout)
        except BaseException:
            print(self.lab.diagnostics())
            raise
        return finished

    def registered(self) -> dict[str, dict[str, Any]]:
        status, body = http("GET", f"{self.api}/engines")
        assert status == 200, (status, body)
        return {e["engine_id"]: e for e in body["engines"]}


def ledger_counts(path: Path) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (line.split()[0], line.split()[1]) for line in path.read_text().splitlines()
    )


def ledger_engines(path: Path, run_ids: set[str]) -> collections.Counter[str]:
    """How many node executions of ``run_ids`` each engine completed."""
    return collections.Counter(
        line.split()[2] for line in path.read_text().splitlines() if line.split()[0] in run_ids
    )


def ran_again(ledger: Path, recorded: set[tuple[str, str]], after: float) -> list[tuple[str, str]]:
    """The executions of recorded ``(run, node)`` pairs (of the Python nodes) that started
    after ``after`` (``time.time()`` once they were seen recorded): a completed node run
    again. One that started before is an abandoned attempt's straggler (its engine thought
    lost under load and not stopped in time; delivery is at least once, its late output is
    refused), not a re-run."""
    return [
        (run, node)
        for run, node, _, _, started in map(str.split, ledger.read_text().splitlines())
        if node in LEDGER_NODES and (run, node) in recorded and float(started) > after
    ]


def recorded_outputs(store: Path) -> set[tuple[str, str]]:
    """(run, node) pairs whose output the orchestrator has committed to its store."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return set(db.execute("SELECT run_id, node_id FROM node_outputs").fetchall())


def sqlite_rows(store: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query of the orchestrator's SQLite store (a bind mount)."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return list(db.execute(sql, params).fetchall())


def pg_query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


def pg_ready(url: str) -> bool:
    try:
        pg_query(url, "SELECT 1")
    except Exception:  # any failure to connect means "not yet"
        return False
    return True


def wait_api(lab: Lab, orch: Container) -> str:
    api = f"http://{orch.ip}:{HTTP_PORT}"

    def ready() -> bool:
        with contextlib.suppress(OSError):
            return http("GET", f"{api}/readyz", timeout=1)[0] == 200
        if orch.state() != "running":
            pytest.fail(f"{orch.name} exited:\n{lab.diagnostics()}")
        return False

    wait_until(ready, f"{orch.name}'s /readyz", 60)
    return api
