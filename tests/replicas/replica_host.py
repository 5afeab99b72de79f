"""One orchestrator replica as a process, for the replica tests: :class:`Replica` runs
``replica_proc.py`` (see there for what it does and its stdin commands)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ledger import ORCHESTRATOR_TESTS
from pg import query

HERE = Path(__file__).resolve().parent


class Replica:
    """``replica_proc.py`` in a subprocess (its command line after ``wrap``: ``ip netns exec
    NS`` runs it on a host of tests/multihost's network); its stdout lines are collected in
    :attr:`lines`."""

    def __init__(
        self,
        url: str,
        prefix: str,
        count: int,
        engines: list[str],
        lease_ttl: float,
        *,
        wrap: Sequence[str] = (),
    ) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(HERE), str(ORCHESTRATOR_TESTS), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, str(HERE / "replica_proc.py"), url, prefix, str(count),
             str(lease_ttl), *engines],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=HERE,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.strip())

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    @property
    def replica_id(self) -> str | None:
        found = [line.split()[1] for line in self.lines if line.startswith("replica ")]
        return found[0] if found else None

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # (a killed one's pipe is broken)
            self.proc.stdin.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        self._stderr.close()


def unfinished_of(url: str, owner: str) -> set[str]:
    """The ids of the queued and running runs ``owner`` (a replica's id) holds."""
    rows = query(
        url,
        f"SELECT run_id FROM runs WHERE status IN ('queued', 'running') AND owner = '{owner}'",
    )
    return {row[0] for row in rows}


def succeeded_runs(url: str) -> int:
    """How many runs of the store at ``url`` succeeded."""
    return int(query(url, "SELECT count(*) FROM runs WHERE status = 'succeeded'")[0][0])
