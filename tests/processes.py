"""Processes for integration tests: engines started with ``dagengine engine --port 0`` that
announce their address on one stdout line, and polling without sleeping-and-hoping.

Every process is killed by its owner's teardown, whatever happened in the test.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

TESTS_DIR = Path(__file__).resolve().parent
START_TIMEOUT = 60.0
_LISTENING = re.compile(r"^dagengine engine (\S+) listening on (\S+):(\d+)")
_CLUSTER_VARIABLES = ("ORCHESTRATOR_ADDRESS", "DAGENGINE_SELF_REGISTER", "ADVERTISE_ADDRESS")


class EngineProcess:
    """``python -m dagengine engine --host 127.0.0.1 --port 0 ARGS...`` in a subprocess, with
    this directory (then ``env``'s ``PYTHONPATH``) on its path; :meth:`kill` ends it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self._stderr: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p
            for p in (
                str(TESTS_DIR),
                (env or {}).get("PYTHONPATH", ""),
                os.environ.get("PYTHONPATH", ""),
            )
            if p
        )
        # The engine joins an orchestrator only when the test says so.
        for name in _CLUSTER_VARIABLES:
            if env is None or name not in env:
                full_env.pop(name, None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagengine",
                "engine",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env=full_env,
            cwd=TESTS_DIR,
        )
        try:
            self.engine_id, host, port = self._read_listening_line()
        except BaseException:
            self.kill()
            raise
        self.address = f"{host}:{port}"

    def _read_listening_line(self) -> tuple[str, str, str]:
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"engine did not start in {START_TIMEOUT}s; stderr: {self.stderr()}")
        match = _LISTENING.match(line)
        if match is None:
            self.proc.wait(timeout=10)
            pytest.fail(f"unexpected engine output {line!r}; stderr: {self.stderr()}")
        return match.group(1), match.group(2), match.group(3)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for servers that need one before start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start_engine() -> Iterator[Callable[..., EngineProcess]]:
    """``start_engine(*args, env=None)`` starts an :class:`EngineProcess` for one test; every
    engine it started is killed at teardown."""
    started: list[EngineProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> EngineProcess:
        engine = EngineProcess(*args, env=env)
        started.append(engine)
        return engine

    try:
        yield start
    finally:
        for engine in started:
            engine.kill()
