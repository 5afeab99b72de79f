"""``dagengine logs RUN [--node ID] [-f]`` against a served API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagengine.api import ServerThread, create_app
from dagengine.cli import main
from dagengine.cli_logs import format_log_line
from dagengine.orchestrator import Orchestrator
from processes import EngineProcess, wait_for

SPEC = {
    "nodes": [
        {"id": "a", "lua": 'log("a one") log("a two") return {}'},
        {"id": "b", "lua": 'log("b one") return {}', "deps": ["a"]},
    ]
}
SLOW = {
    "nodes": [
        {"id": "a", "lua": 'log("before the spin") return {}'},
        {
            "id": "spin",
            "deps": ["a"],
            "lua": "while true do end",
            "limits": {"instructions": 10**15},
        },
    ]
}


@pytest.fixture
def served() -> Iterator[tuple[Orchestrator, str]]:
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("w", "1.0.0", SPEC)
        orch.register_workflow("slow", "1.0.0", SLOW)
        app = create_app(orch)
        with ServerThread(app) as server:
            yield orch, server.url
        app.state.api.close()


def _messages(out: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in out.splitlines():
        _clock, where, level, message = line.split(None, 3)
        rows.append((where, level, message))
    return rows


def test_prints_a_runs_lines_and_one_nodes(
    served: tuple[Orchestrator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    orch, url = served
    handle_done = orch.execute_workflow("w", wait=True)
    orch.store.flush()
    assert main(["logs", handle_done.run_id, "--url", url]) == 0
    assert _messages(capsys.readouterr().out) == [
        ("a#1", "INFO", "a one"),
        ("a#1", "INFO", "a two"),
        ("b#1", "INFO", "b one"),
    ]
    assert main(["logs", handle_done.run_id, "--url", url, "--node", "b"]) == 0
    assert _messages(capsys.readouterr().out) == [("b#1", "INFO", "b one")]


def test_follow_prints_until_the_run_ends(
    served: tuple[Orchestrator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    orch, url = served
    run_id = orch.execute_workflow("slow", wait=False).run_id
    codes: list[int] = []
    follower = threading.Thread(
        target=lambda: codes.append(main(["logs", run_id, "-f", "--url", url]))
    )
    follower.start()
    out = _Output(capsys)
    wait_for(lambda: "before the spin" in out.read(), "the followed line")
    orch.cancel_run(run_id)
    follower.join(timeout=20)
    assert not follower.is_alive()
    assert codes == [0]
    assert _messages(out.read()) == [("a#1", "INFO", "before the spin")]


class _Output:
    """What the command printed so far (capsys hands each part over once)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._text = ""

    def read(self) -> str:
        self._text += self._capsys.readouterr().out
        return self._text


def test_follow_shows_a_running_remote_python_nodes_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    held = {"nodes": [{"id": "held", "python": "live_log_tasks:held"}]}
    engine = EngineProcess("--engine-id", "cli-logs")
    orch = Orchestrator(store=":memory:", embedded_engine=False)
    app = create_app(orch)
    server = ServerThread(app).start()
    try:
        orch.register_engine(engine.engine_id, engine.address)
        orch.register_workflow("held", "1.0.0", held)
        run_id = orch.execute_workflow("held", {"release": str(release)}, wait=False).run_id
        codes: list[int] = []
        follower = threading.Thread(
            target=lambda: codes.append(main(["logs", run_id, "-f", "--url", server.url]))
        )
        follower.start()
        out = _Output(capsys)
        # Printed while the node still waits on the engine for the file made only below.
        wait_for(lambda: "still waiting" in out.read(), "the running node's lines")
        assert orch.get_run(run_id).status == "running"
        release.touch()
        follower.join(timeout=30)
        assert not follower.is_alive()
        assert codes == [0]
        assert _messages(out.read()) == [
            ("held#1", "INFO", "waiting for release"),
            ("held#1", "WARNING", "still waiting"),
            ("held#1", "INFO", "released"),
        ]
    finally:
        release.touch()
        server.stop()
        app.state.api.close()
        orch.stop()
        engine.kill()


def test_an_unknown_run_is_an_error(
    served: tuple[Orchestrator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = served
    assert main(["logs", "nope", "--url", url]) != 0
    assert "404" in capsys.readouterr().err


def test_format_log_line() -> None:
    line = {"time": 0.25, "node_id": "n", "node_attempt": 2, "level": "ERROR", "message": "x y"}
    where, level, message = format_log_line(line).split(None, 1)[1].split(None, 2)
    assert (where, level, message) == ("n#2", "ERROR", "x y")
