"""The engine processes `dagengine serve --engines N` starts exit when serve dies, even by
SIGKILL (no chance to stop them): they watch their parent and drain as on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from processes import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)"),
]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody reaped: in a container PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_engines_exit_when_serve_is_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dagengine", "serve", "--engines", "2"),
            *("--store", str(tmp_path / "state.db"), "--host", "127.0.0.1", "--port", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    engines: list[int] = []
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(90)
        assert line, "serve did not print its listening line"
        assert "listening on" in line[0], line[0]
        engines = [pid for pid in _children(proc.pid) if "engine" in _cmdline(pid)]
        assert len(engines) == 2, [_cmdline(pid) for pid in _children(proc.pid)]

        proc.kill()  # SIGKILL: serve cannot stop its engines itself
        proc.wait(30)
        # Generous: the engines drain (serve gives them 2 s of grace) and stop.
        wait_for(lambda: not any(_alive(pid) for pid in engines), "serve's engines to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in engines:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _engine(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dagengine", "engine", "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait (generously) for the engine to exit by itself; its exit code and stderr."""
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return code, err


def test_an_engine_exits_when_its_parent_closes_the_pipe() -> None:
    # The portable half: the parent is alive (no parent-death signal), but its end of the
    # engine's stdin is closed -- as when it dies -- so the engine drains and exits.
    proc = _engine({"DAGENGINE_PARENT_PID": str(os.getpid())})
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        assert "listening on" in proc.stdout.readline()
    finally:
        proc.stdin.close()
    code, err = _finish(proc)
    assert code == 0, err
    assert "parent exited: draining" in err


def test_an_engine_whose_parent_is_already_gone_exits_at_once() -> None:
    # Started after its parent died (the race before the parent-death signal is armed): the
    # engine sees another parent and stops; stdin stays open, so the pipe plays no part.
    proc = _engine({"DAGENGINE_PARENT_PID": "999999999"})
    code, err = _finish(proc)
    assert code == 0, err
    assert "parent exited: draining" in err


def test_a_bad_parent_pid_is_refused() -> None:
    proc = _engine({"DAGENGINE_PARENT_PID": "me"})
    code, err = _finish(proc)
    assert code != 0
    assert "DAGENGINE_PARENT_PID='me': expected the parent's process id" in err
