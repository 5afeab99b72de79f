"""Containers of tests/deploy/test_images.py: the ``docker`` CLI, a private network, the
orchestrator and engines of the image, and what they report.

* :func:`docker_problem` says why Docker cannot be used here (``None`` when it can).
* :class:`Lab` owns a network and every container started on it; :meth:`Lab.close` removes
  them all, whatever state they are in (paused, killed, running).
* :class:`EventLog` follows the orchestrator's ``GET /events`` (server-sent events) in a
  thread, so a test waits for ``engine.unhealthy`` or ``run.redispatched`` rather than sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DEPLOY_TESTS = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_TESTS.parent.parent
#: Every container and network made here carries this label (``docker ps --filter``).
LABEL = "org.dagengine.test=images"
ENGINE_PORT = 50051
HTTP_PORT = 8080


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    """Run ``docker ARGS``; its stdout. A failure fails the test with docker's message."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"docker {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def docker_problem() -> str | None:
    """Why the Docker engine cannot be used here, or ``None``."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer in 30 s"
    if done.returncode != 0 or not done.stdout.strip():
        return f"the Docker engine does not answer: {done.stderr.strip() or done.stdout.strip()}"
    return None


def http(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One HTTP request: (status, decoded JSON body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def grpc_health(address: str, service: str = "", timeout: float = 1.0) -> str:
    """``grpc.health.v1.Health/Check`` of ``service`` at ``address``: the status name, or the
    error code's name (what the kubelet's gRPC probe asks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@dataclass
class Container:
    """A container of the lab; ``name`` is also its host name on the network."""

    name: str
    full_name: str
    #: ``time.monotonic()`` just before ``docker run``.
    started: float

    @property
    def ip(self) -> str:
        return docker(
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            self.full_name,
        )

    def state(self, what: str = "Status") -> str:
        """``.State.<what>`` (``Status``, ``Health.Status``, ...)."""
        return docker("inspect", "--format", "{{.State." + what + "}}", self.full_name)

    def health_outputs(self) -> list[str]:
        """What the last runs of the HEALTHCHECK command printed, oldest first."""
        health = json.loads(docker("inspect", "--format", "{{json .State.Health}}", self.full_name))
        return [str(entry["Output"]).strip() for entry in (health or {}).get("Log") or []]

    def logs(self, tail: int = 40) -> str:
        done = subprocess.run(
            ["docker", "logs", "--tail", str(tail), self.full_name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return (done.stdout + done.stderr)[-4000:]

    def kill(self) -> float:
        """``docker kill`` (SIGKILL); ``time.time()`` when it was sent."""
        when = time.time()
        docker("kill", self.full_name)
        return when

    def pause(self, tries: int = 5) -> float:
        """``docker pause``; the time of the attempt that froze it. The cgroup v1 freezer
        gives up ("unable to freeze") when a task is busy in the kernel at that moment (here
        often I/O through fuse-overlayfs); runc thaws the container again and leaves the retry
        to its caller, as its maintainers advise (opencontainers/runc#4388)."""
        command = ["docker", "pause", self.full_name]
        while True:
            tries -= 1
            when = time.time()
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                return when
            if tries == 0 or "unable to freeze" not in done.stderr:
                pytest.fail(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
            time.sleep(0.2)

    def unpause(self) -> float:
        when = time.time()
        docker("unpause", self.full_name)
        return when


@dataclass
class EventLog:
    """The orchestrator's events (``GET /events``), each with ``_received`` (``time.time()``),
    gathered by a daemon thread until the connection ends."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(self.url) as reply:
            for raw in reply:
                line = raw.decode().rstrip("\n")
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                event["_received"] = time.time()
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def of(self, kind: str, *, after: int = 0, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            found = self.events[after:]
        return [
            e for e in found if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    def wait(
        self, kind: str, what: str, timeout: float = 30.0, *, after: int = 0, **match: Any
    ) -> dict[str, Any]:
        """The first event of type ``kind`` (fields equal to ``match``) from index ``after``
        on; fails the test naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.of(kind, after=after, **match)
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(left)


class Lab:
    """A private Docker network, the orchestrator (``serve``, self-registration, SQLite store in
    ``state/``) and engines of ``image``; ``shared/`` (the workflow module and the ledger) is
    mounted in every container at /work/shared and examples/ at /work/examples."""

    def __init__(self, image: str, tmp: Path) -> None:
        self.image = image
        self.tag = uuid.uuid4().hex[:8]
        self.network = f"dagengine-test-{self.tag}"
        self.containers: dict[str, Container] = {}
        self.shared = tmp / "shared"
        self.state = tmp / "state"
        for folder in (self.shared, self.state):
            folder.mkdir()
            folder.chmod(0o777)  # the containers run as uid 10001
        shutil.copy(DEPLOY_TESTS / "image_flow.py", self.shared / "image_flow.py")
        self.ledger = self.shared / "ledger.txt"
        self.ledger.touch()
        self.ledger.chmod(0o666)
        self.store = self.state / "dagengine.db"
        docker("network", "create", "--label", LABEL, self.network)

    def _mounts(self) -> list[str]:
        return [
            "-v",
            f"{REPO_ROOT / 'examples'}:/work/examples:ro",
            "-v",
            f"{self.shared}:/work/shared",
            "-e",
            "PYTHONPATH=/work:/work/shared",
            "-e",
            "DAGENGINE_TEST_LEDGER=/work/shared/ledger.txt",
        ]

    def run(
        self,
        name: str,
        *args: str,
        options: tuple[str, ...] = (),
        image: str | None = None,
        alias: str | None = None,
        dagengine: bool = True,
    ) -> Container:
        """``docker run -d`` an image (default: the lab's) as ``name`` on the network, known
        there as ``alias`` (default ``name``). A ``dagengine`` container runs as deploy/'s
        pods do (read-only root filesystem, no capabilities) with the image's own HEALTHCHECK
        command probed every second (its 30 s interval is for production)."""
        full = f"dgt-{self.tag}-{name}"
        container = Container(name, full, time.monotonic())
        self.containers[name] = container  # removed by close() even if the run fails
        hardening = [
            "--health-interval",
            "1s",
            "--health-start-period",
            "60s",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            *self._mounts(),
        ]
        docker(
            "run",
            "-d",
            "--name",
            full,
            "--hostname",
            name,
            "--network",
            self.network,
            "--network-alias",
            alias or name,
            "--label",
            LABEL,
            *(hardening if dagengine else []),
            *options,
            image or self.image,
            *args,
        )
        return container

    def start_orchestrator(
        self,
        name: str = "orch",
        *,
        store: str | None = None,
        alias: str = "orch",
        env: tuple[str, ...] = (),
        engines: tuple[str, ...] = (),
    ) -> Container:
        """``dagengine serve`` on ``store`` (default: SQLite in ``state/``, a bind mount),
        finding the engines by self-registration, or at the addresses ``engines`` (static
        discovery, asked every second); ``env``: more ``NAME=value`` variables."""
        discovery = (
            ("DISCOVERY=static", f"ENGINES={','.join(engines)}", "ENGINE_DISCOVERY_INTERVAL=1")
            if engines
            else ("DISCOVERY=self-registration",)
        )
        return self.run(
            name,
            "serve",
            "--host",
            "0.0.0.0",
            "--workflows",
            "/work/examples",
            "--workflows",
            "/work/shared",
            alias=alias,
            options=(
                "-v",
                f"{self.state}:/var/lib/dagengine",
                *(arg for pair in discovery for arg in ("-e", pair)),
                "-e",
                "ENGINE_HEALTH_CHECK_INTERVAL=1",
                "-e",
                f"DAGENGINE_STORE={store or '/var/lib/dagengine/dagengine.db'}",
                *(arg for pair in env for arg in ("-e", pair)),
            ),
        )

    def start_postgres(self, image: str, name: str = "pg") -> Container:
        """Debian's PostgreSQL 15 server in ``image`` (build-base.sh with postgresql-15): a
        throwaway cluster (initdb at start, trust authentication on the lab's network, fsync
        off), database ``postgres``, port 5432."""
        script = (
            "set -e; bin=/usr/lib/postgresql/15/bin; "
            "$bin/initdb -D /tmp/data -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync "
            ">/tmp/initdb.log; "
            "echo 'host all all 0.0.0.0/0 trust' >> /tmp/data/pg_hba.conf; "
            "exec $bin/postgres -D /tmp/data -k /tmp -c listen_addresses='*' -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        return self.run(
            name,
            "sh",
            "-c",
            script,
            image=image,
            dagengine=False,
            options=("--user", "postgres", "--tmpfs", "/tmp:mode=1777"),
        )

    def start_engine(self, name: str, orchestrator: str | None = "orch") -> Container:
        """An engine registering itself with ``orchestrator`` (``None``: found by the
        orchestrators' static discovery at ``name:50051``)."""
        register = () if orchestrator is None else (
            "--self-register", "--orchestrator", f"{orchestrator}:{ENGINE_PORT}"
        )  # fmt: skip
        return self.run(name, "engine", *register, options=("-e", f"ENGINE_ID={name}"))

    def diagnostics(self) -> str:
        """Every container's state and the end of its log (for a failure message)."""
        parts = []
        for container in self.containers.values():
            state = docker(
                "inspect", "--format", "{{.State.Status}}", container.full_name, check=False
            )
            parts.append(f"--- {container.name} ({state})\n{container.logs()}")
        return "\n".join(parts)

    def close(self) -> None:
        """Remove every container (a paused one is unpaused first) and the network."""
        for container in self.containers.values():
            state = docker(
                "inspect", "--format", "{{.State.Status}}", container.full_name, check=False
            )
            if state == "paused":
                docker("unpause", container.full_name, check=False)
            docker("rm", "-f", "-v", container.full_name, check=False)
        docker("network", "rm", self.network, check=False)
        # Files the containers wrote (uid 10001) stay removable by the test's user.
        for root, dirs, files in os.walk(self.state):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, name), 0o777)

    def leftovers(self) -> list[str]:
        """Containers or the network of this lab that still exist."""
        names = docker(
            "ps", "-a", "--filter", f"name=dgt-{self.tag}-", "--format", "{{.Names}}"
        ).split()
        networks = docker(
            "network", "ls", "--filter", f"name={self.network}", "--format", "{{.Name}}"
        ).split()
        return names + networks


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll ``condition`` every 20 ms until it holds; ``time.monotonic()`` then. Fails the
    test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def lab_of(image: str, tmp: Path) -> Iterator[Lab]:
    """A :class:`Lab` closed however the block ends."""
    lab = Lab(image, tmp)
    try:
        yield lab
    finally:
        lab.close()
