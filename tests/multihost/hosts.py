"""The processes of a multi-host test: an orchestrator and engines, each on its own host (a
network namespace of :class:`netns.Network`), and what they report.

* :class:`OrchestratorHost` runs ``orchestrator_host.py`` and collects its JSON lines;
  :meth:`OrchestratorHost.wait` waits for a condition on them (never a blind sleep).
* :class:`EngineHost` runs ``dagengine engine --self-register`` and waits for its
  ``listening on`` line.

Both keep stderr in a temporary file, quoted when something fails, and are killed by their
owner's teardown whatever happened (and by :meth:`netns.Network.close` after that).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from netns import Network

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent
PORT = 50051
START_TIMEOUT = 30.0
_LISTENING = re.compile(r"^dagengine engine (\S+) listening on (\S+):(\d+)")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    env.pop("ORCHESTRATOR_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Process:
    """A process on a host, its stderr in a temporary file."""

    proc: subprocess.Popen[str]

    def __init__(self, net: Network, host: str, argv: list[str], env: dict[str, str]) -> None:
        self.host = host
        self.address = net.address(host)
        self._threads: list[threading.Thread] = []
        self._stderr: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = net.run_in(
            host,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_env(env),
            cwd=HERE,
        )

    def _start_thread(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stderr(self, tail: int = 3000) -> str:
        """The end of the process's stderr."""
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-tail:]

    def sigkill(self) -> float:
        """SIGKILL the process and reap it; returns when it was sent (``time.time()``)."""
        when = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return when

    def kill(self) -> None:
        """Kill the process (if it still runs) and release its pipes and files."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for thread in self._threads:  # they end at EOF, once the process is gone
            thread.join(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._stderr.close()


class OrchestratorHost(_Process):
    """``orchestrator_host.py`` on host ``host``; see that module for the protocol."""

    def __init__(self, net: Network, host: str, store: Path, *, interval: float = 1.0) -> None:
        super().__init__(
            net,
            host,
            [
                sys.executable,
                str(HERE / "orchestrator_host.py"),
                "--store",
                str(store),
                "--port",
                str(PORT),
                "--interval",
                str(interval),
            ],
            {},
        )
        self.store = store
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._start_thread(self._read)
        try:
            self.ready = self.wait(
                lambda ln: ln.get("event") == "ready", "the orchestrator to start", START_TIMEOUT
            )
        except BaseException:
            self.kill()
            raise
        #: ``time.time()`` when it said it was ready.
        self.ready_at = time.time()

    @property
    def target(self) -> str:
        """The ``host:port`` engines register with."""
        return f"{self.address}:{PORT}"

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for raw in stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "garbage", "text": raw}
            line["_received"] = time.time()
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append({"event": "eof", "_received": time.time()})
            self._cond.notify_all()

    def send(self, cmd: str, **args: Any) -> None:
        """Send a command (see ``orchestrator_host``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()

    def wait(
        self,
        match: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 30.0,
        *,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first line (from index ``after`` on) that ``match`` accepts, waiting for it up
        to ``timeout`` seconds; fails the test naming ``what``."""
        deadline = time.monotonic() + timeout
        seen = after
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if match(line):
                        return line
                    if line.get("event") == "eof":
                        pytest.fail(
                            f"the orchestrator exited while waiting for {what}; "
                            f"stderr: {self.stderr()}"
                        )
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"timed out after {timeout}s waiting for {what}; last lines: "
                        f"{self.lines[-5:]}; stderr: {self.stderr()}"
                    )
                self._cond.wait(left)

    def request(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        mark = self.mark()
        self.send(cmd, **args)
        return self.wait(
            lambda ln: ln.get("reply") == cmd, f"the reply to {cmd}", timeout, after=mark
        )

    def mark(self) -> int:
        """A position in :attr:`lines`, for ``wait(after=...)``."""
        with self._cond:
            return len(self.lines)

    def events(self, type_: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """The event lines so far of type ``type_`` whose fields equal ``fields``."""
        with self._cond:
            lines = list(self.lines)
        return [
            ln
            for ln in lines
            if "event" in ln
            and (type_ is None or ln["event"] == type_)
            and all(ln.get(k) == v for k, v in fields.items())
        ]

    def progress(self) -> dict[str, int]:
        """The latest run counts by status."""
        found = self.events("progress")
        return found[-1] if found else {}

    def unsuccessful(self) -> list[tuple[str, str, int, str | None, str | None]]:
        """``(run_id, status, attempt, engine_id, error)`` of the runs that failed or were
        cancelled, read from the store file."""
        with contextlib.closing(sqlite3.connect(f"file:{self.store}?mode=ro", uri=True)) as db:
            return db.execute(
                "SELECT run_id, status, attempt, engine_id, error FROM runs "
                "WHERE status IN ('failed', 'cancelled')"
            ).fetchall()

    def wait_succeeded(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``count`` runs have succeeded (failing at once if one fails)."""

        def match(line: dict[str, Any]) -> bool:
            if line.get("event") != "progress":
                return False
            if line["failed"] or line["cancelled"]:
                pytest.fail(
                    f"runs failed or were cancelled: {self.unsuccessful()}; stderr: {self.stderr()}"
                )
            return bool(line["succeeded"] >= count)

        return self.wait(match, f"{count} runs to succeed", timeout)

    def wait_engines(self, engine_ids: set[str], *, after: int = 0, timeout: float = 30.0) -> None:
        """Wait until each engine of ``engine_ids`` joined (after line ``after``)."""
        for engine_id in sorted(engine_ids):
            self.wait(
                lambda ln, eid=engine_id: (
                    ln.get("event") == "engine.joined" and ln.get("engine_id") == eid
                ),
                f"engine {engine_id} to register",
                timeout,
                after=after,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it cleanly (``stop`` command) and wait for it to exit 0."""
        self.send("stop")
        code = self.proc.wait(timeout=timeout)
        assert code == 0, f"orchestrator exited {code}; stderr: {self.stderr()}"


class EngineHost(_Process):
    """``dagengine engine`` on host ``host``: listens on ``0.0.0.0:50051`` of its namespace,
    registers itself with the orchestrator at ``orchestrator`` (``host:port``) and advertises
    its namespace address. ``ledger``/``node_seconds`` configure ``multihost_tasks``."""

    def __init__(
        self,
        net: Network,
        host: str,
        engine_id: str,
        orchestrator: str,
        ledger: Path,
        *,
        capacity: int = 8,
        node_seconds: float = 0.02,
    ) -> None:
        self.engine_id = engine_id
        super().__init__(
            net,
            host,
            [
                sys.executable,
                "-m",
                "dagengine",
                "engine",
                "--host",
                "0.0.0.0",
                "--port",
                str(PORT),
                "--engine-id",
                engine_id,
                "--capacity",
                str(capacity),
                "--orchestrator",
                orchestrator,
                "--self-register",
                "--advertise-address",
                f"{net.address(host)}:{PORT}",
            ],
            {
                "DAGENGINE_TEST_LEDGER": str(ledger),
                "DAGENGINE_TEST_NODE_SECONDS": str(node_seconds),
                "DAGENGINE_TEST_ENGINE_ID": engine_id,
            },
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:  # the first line, then drained so the pipe never fills
                lines.put(line)

        self._start_thread(pump)
        try:
            first = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.kill()
            pytest.fail(f"engine {engine_id} did not start; stderr: {self.stderr()}")
        if _LISTENING.match(first) is None:
            self.kill()
            pytest.fail(f"unexpected engine output {first!r}; stderr: {self.stderr()}")
