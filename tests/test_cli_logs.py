"""``dagengine logs RUN [--node ID] [-f]`` against a served API."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from dagengine.api import ServerThread, create_app
from dagengine.cli import main
from dagengine.cli_logs import format_log_line
from dagengine.orchestrator import Orchestrator

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
    orch.store.flush()
    deadline = threading.Event()
    deadline.wait(1.0)
    orch.cancel_run(run_id)
    follower.join(timeout=20)
    assert not follower.is_alive()
    assert codes == [0]
    assert _messages(capsys.readouterr().out) == [("a#1", "INFO", "before the spin")]


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
