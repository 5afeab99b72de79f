"""Process logs: text or one JSON object a line, with the run and node ids of each record,
and the orchestrator's events on `dagengine.events` at DEBUG."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagengine import DAG, Node, NodeContext, PythonExecutor
from dagengine.logconfig import (
    EventLogger,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_context,
)
from dagengine.orchestrator import Orchestrator
from dagengine.results import RunResult
from processes import wait_for


def _record(
    msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord("dagengine.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_level_logger_message_and_ids() -> None:
    line = JsonFormatter().format(_record(run_id="r-1", node_id="load", attempt=2))
    obj = json.loads(line)
    assert obj["level"] == "warning"
    assert obj["logger"] == "dagengine.test"
    assert obj["msg"] == "hello world"
    assert obj["run_id"] == "r-1"
    assert obj["node_id"] == "load"
    assert obj["attempt"] == 2
    assert obj["ts"].endswith("Z")
    assert "\n" not in line


def test_json_lines_hold_the_traceback_and_odd_values() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed %r", (object(),), sys.exc_info()
        )
    record.run_id = Path("/not/json")  # an id of any type must not lose the line
    obj = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in obj["exc"]
    assert obj["run_id"] == "/not/json"


def test_log_context_binds_ids_for_a_block_and_extra_wins() -> None:
    fmt = JsonFormatter()
    with log_context(run_id="r-1", workflow_id="wf"):
        with log_context(node_id="n"):
            inner = json.loads(fmt.format(_record()))
        explicit = json.loads(fmt.format(_record(run_id="r-2")))
    outside = json.loads(fmt.format(_record()))
    assert (inner["run_id"], inner["workflow_id"], inner["node_id"]) == ("r-1", "wf", "n")
    assert explicit["run_id"] == "r-2"
    assert "run_id" not in outside
    with pytest.raises(ValueError, match="unknown keys"), log_context(runid="typo"):
        pass


def test_text_format_appends_ids() -> None:
    line = TextFormatter().format(_record(run_id="r-1", node_id="n"))
    assert line.endswith("WARNING dagengine.test: hello world run_id=r-1 node_id=n")


def test_bad_format_or_level_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGENGINE_LOG_FORMAT", "yaml")
    with pytest.raises(
        ValueError, match=r"DAGENGINE_LOG_FORMAT 'yaml': expected one of text, json"
    ):
        configure_logging()
    with pytest.raises(ValueError, match="'loud'"):
        configure_logging("json", "loud")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_event_logger_writes_each_run_and_node_event_with_its_ids() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    with Orchestrator(store=":memory:") as orch:
        nodes = [{"id": "a", "lua": "return {}"}, {"id": "b", "lua": "error('no')", "deps": ["a"]}]
        orch.register_workflow("two", "1.0.0", {"nodes": nodes})
        events = EventLogger()
        assert events.attach(orch)
        result = orch.execute_workflow("two", {}, run_id="logged-run")
        assert isinstance(result, RunResult)
        assert not result.ok
        wait_for(lambda: "run.failed" in out.getvalue(), "the run's end in the log")
        events.detach()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    mine = [obj for obj in lines if obj["logger"] == "dagengine.events"]
    kinds = {obj["msg"].split(":")[0] for obj in mine}
    assert {"run.queued", "run.started", "node.succeeded", "node.failed", "run.failed"} <= kinds
    failed = next(obj for obj in mine if obj["msg"].startswith("node.failed"))
    assert failed["node_id"] == "b"
    assert failed["workflow_id"] == "two"
    assert failed["run_id"] == "logged-run"
    assert "no" in failed["msg"]


def test_event_logger_stays_off_above_debug() -> None:
    quiet = logging.getLogger("dagengine.test.quiet")
    quiet.setLevel(logging.INFO)
    with Orchestrator(store=":memory:") as orch:
        assert not EventLogger(quiet).attach(orch)


def test_serve_logs_json_lines_with_run_ids(tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "one.yaml").write_text(
        "id: one\nversion: 1.0.0\nnodes:\n  - {id: a, lua: 'return {}'}\n"
    )
    env = {**os.environ, "DAGENGINE_LOG_LEVEL": "debug"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagengine", "serve", "--workflows", str(folder),
         "--store", str(tmp_path / "s.db"), "--host", "127.0.0.1", "--port", "0",
         "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:"), url
        request = urllib.request.Request(
            f"{url}/workflows/one/runs", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            run_id = json.load(reply)["run_id"]
        wait_for(
            lambda: any(run_id in line and "run.completed" in line for line in err_lines),
            "the run's completion in serve's log",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    objs = [json.loads(line) for line in err_lines if line.strip()]  # every line is JSON
    assert any(
        o["logger"] == "dagengine.serve" and "registered one@1.0.0" in o["msg"] for o in objs
    )
    done = next(o for o in objs if o["msg"] == "run.completed")
    assert done["run_id"] == run_id
    assert done["workflow_id"] == "one"


def test_engine_refuses_a_bad_log_level() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dagengine", "engine", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DAGENGINE_LOG_LEVEL": "chatty"},
    )
    assert proc.returncode == 2
    assert "DAGENGINE_LOG_LEVEL 'chatty'" in proc.stderr


def _chatty(ctx: NodeContext) -> dict[str, int]:
    logging.getLogger("tests.chatty").warning("from the node")
    return {"v": 1}


@pytest.mark.usefixtures("restore_root")
def test_a_node_s_records_are_its_log_not_the_process_s() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    dag = DAG()
    dag.add_node(Node("n", [], PythonExecutor(_chatty)))
    handle = dag.start()
    lines = [e for e in handle.events() if e.kind == "node_log"]
    assert handle.wait().ok
    logging.getLogger("tests.chatty").warning("from the process")
    assert [e.detail["message"] for e in lines if e.detail] == ["from the node"]
    written = [json.loads(line)["msg"] for line in out.getvalue().splitlines()]
    assert written == ["from the process"]
