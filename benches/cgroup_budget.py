"""A CPU budget for a process, as a host of its own would give it: a Linux cgroup with a CPU
quota (``cores`` of CPU time per period, whatever the machine has), so that benchmarks on a
machine with fewer cores than processes can still show how several processes scale when each
has its own. Needs root and the ``cpu`` controller: cgroup v1 (``/sys/fs/cgroup/cpu``) or v2
(``cpu.max``). A benchmark says when it uses one: the machine's other processes (the
database, the engines) are not budgeted and share what is left.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

PERIOD_US = 100_000
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


class CpuBudget:
    """A fresh cgroup named ``name`` whose processes together get at most ``cores`` CPUs."""

    def __init__(self, name: str, cores: float) -> None:
        if cores <= 0:
            raise ValueError(f"a CPU budget must be > 0 cores, got {cores!r}")
        quota = max(1000, int(cores * PERIOD_US))
        if (_V1 / "cpu.cfs_quota_us").exists():
            self.path = _V1 / f"{name}-{os.getpid()}"
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        elif "cpu" in (_V2 / "cgroup.controllers").read_text().split():
            subtree = _V2 / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            self.path = _V2 / f"{name}-{os.getpid()}"
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            raise SystemExit("no cgroup cpu controller here: a CPU budget needs cgroup v1 or v2")
        self.cores = cores

    def add(self, pid: int) -> None:
        """Put process ``pid`` (and the threads and children it makes from now on) in it."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Remove the cgroup once its processes have ended (a moment after they are reaped,
        the kernel may still count them: up to 2 s)."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                self.path.rmdir()
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
