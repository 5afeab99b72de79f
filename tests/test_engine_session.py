"""The Session client (``dagengine.engine.open_session``, over ``_core.EngineSession``): the
orchestrator's Session stream to an engine, driven from Rust, against real engine processes
(and, for the protocol check, a grpcio stand-in of an engine of another dagengine version).
It is the one client of the Session protocol; these tests also pin what the engine's side
of it does (refusals in band, the result's JSON text, cancels right behind a start)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from dagengine.engine import (
    EngineSession,
    build_run_request,
    open_session,
    refusal_error,
    result_from_proto,
    result_json_from_proto,
)
from dagengine.exceptions import EngineBusy, EngineUnavailable, InvalidRequest
from dagengine.results import RunStatus
from dagengine.v1 import engine_pb2 as pb
from processes import EngineProcess, wait_for

CANCELLED, UNAVAILABLE = 1, 14
GOOD = {
    "id": "good",
    "nodes": [
        {"id": "a", "lua": "return {v = inputs.x + 1}"},
        {"id": "b", "deps": ["a"], "lua": "return {w = results.a.v * 2}"},
    ],
}
SPIN = {"id": "spin", "nodes": [{"id": "s", "lua": "while true do end"}]}


def thread_name() -> str:
    """The OS name of the calling thread (a thread Python did not start is a "Dummy" to
    ``threading``)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


class Replies:
    """What a session handed over: its replies by run, and its end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: dict[str, list[pb.RunEvent]] = {}
        self.refused: dict[str, pb.Refusal] = {}
        self.calls = 0
        self.threads: set[str] = set()
        self.ended = threading.Event()
        self.end: tuple[int, str] | None = None
        self.after_end = 0  # replies handed over after the end (must stay 0)

    def on_replies(self, messages: list[bytes]) -> None:
        with self.lock:
            self.calls += 1
            self.threads.add(thread_name())
            if self.ended.is_set():
                self.after_end += 1
            for raw in messages:
                for msg in pb.SessionReplies.FromString(raw).runs:
                    if msg.HasField("refused"):
                        self.refused[msg.run_id] = msg.refused
                    self.events.setdefault(msg.run_id, []).extend(msg.events)

    def on_end(self, code: int, message: str) -> None:
        with self.lock:
            assert self.end is None, "on_end called twice"
            self.end = (code, message)
        self.ended.set()

    def result(self, run_id: str) -> pb.RunResult | None:
        with self.lock:
            for event in self.events.get(run_id, ()):
                if event.HasField("result"):
                    return event.result
        return None

    def started(self, run_id: str, node_id: str) -> bool:
        with self.lock:
            return any(
                e.kind == pb.NODE_STARTED and e.node_id == node_id
                for e in self.events.get(run_id, ())
            )


def session_to(address: str, replies: Replies, **kwargs: Any) -> EngineSession:
    return open_session(
        address,
        replies.on_replies,
        replies.on_end,
        max_message_bytes=kwargs.pop("max_message_bytes", 4 * 1024 * 1024),
        keepalive=kwargs.pop("keepalive", 10.0),
        **kwargs,
    )


def request(spec: dict[str, Any], inputs: dict[str, Any] | None = None) -> tuple[str, bytes]:
    run_id = uuid.uuid4().hex
    return run_id, build_run_request(spec, inputs or {}, run_id=run_id).SerializeToString()


def unavailable_end(port: int) -> str:
    """Start a run on a session to ``port`` on this host; the session must end UNAVAILABLE.
    Returns the end's message."""
    replies = Replies()
    session = session_to(f"127.0.0.1:{port}", replies)
    session.start(request(GOOD)[1])
    assert replies.ended.wait(10)
    assert replies.end is not None
    code, message = replies.end
    assert code == UNAVAILABLE
    assert session.ended
    return message


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    proc = EngineProcess("--engine-id", "session-engine", "--capacity", "64")
    try:
        yield proc
    finally:
        proc.kill()


def test_many_runs_over_one_session_each_answered_once(engine: EngineProcess) -> None:
    replies = Replies()
    session = session_to(engine.address, replies)
    runs = [request(GOOD, {"x": i}) for i in range(200)]
    for _, encoded in runs:
        assert session.start(encoded)
    wait_for(lambda: all(replies.result(r) is not None for r, _ in runs), "200 results")
    for i, (run_id, _) in enumerate(runs):
        result = result_from_proto(replies.result(run_id))  # type: ignore[arg-type]
        assert result.status is RunStatus.SUCCEEDED
        assert result.outputs["b"] == {"w": (i + 1) * 2}
        # Exactly one result per run, after both nodes' events.
        events = replies.events[run_id]
        assert sum(e.HasField("result") for e in events) == 1
        assert events[-1].HasField("result")
    assert replies.threads == {"dagengine-io"}
    assert replies.calls <= 200  # replies of several runs come together
    assert not session.ended
    assert replies.end is None
    session.close()
    assert replies.ended.wait(10)
    assert replies.end == (CANCELLED, "the session was closed")
    assert session.ended
    assert not session.start(runs[0][1])  # nothing goes out on an ended session
    assert not session.cancel(runs[0][0])
    session.close()  # idempotent: on_end is not called again
    assert replies.after_end == 0


def test_a_session_to_a_closed_port_ends_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once it is closed
    assert "cannot connect" in unavailable_end(port)


def test_an_address_that_is_no_address_is_refused_at_once() -> None:
    replies = Replies()
    with pytest.raises(EngineUnavailable, match="not a host:port address"):
        session_to("no address at all", replies)
    assert not replies.ended.is_set()


def test_cancel_goes_over_the_session_after_the_start(engine: EngineProcess) -> None:
    replies = Replies()
    session = session_to(engine.address, replies)
    run_id, encoded = request(SPIN)
    assert session.start(encoded)
    # Sent right behind the start: it must not overtake it (the engine would drop it).
    assert session.cancel(run_id)
    wait_for(lambda: replies.result(run_id) is not None, "the cancelled run's result")
    assert result_from_proto(replies.result(run_id)).status is RunStatus.CANCELLED  # type: ignore[arg-type]
    session.close()


def test_closing_a_session_cancels_its_runs_on_the_engine(engine: EngineProcess) -> None:
    replies = Replies()
    session = session_to(engine.address, replies)
    run_id, encoded = request(SPIN)
    assert session.start(encoded)
    wait_for(lambda: replies.started(run_id, "s"), "the spin to start")
    session.close()
    assert replies.ended.wait(10)
    from dagengine.engine import EngineClient

    with EngineClient(engine.address, timeout=30) as client:
        # Well before the script's own 10 s limit would stop it.
        wait_for(
            lambda: run_id not in client.info().active_run_ids,
            "the spin to be cancelled",
            timeout=5,
        )


def test_a_refused_run_is_answered_in_band_and_the_session_goes_on(engine: EngineProcess) -> None:
    replies = Replies()
    session = session_to(engine.address, replies)
    run_id, _ = request(GOOD)
    bad = build_run_request(GOOD, {"x": 1}, run_id=run_id)
    bad.inputs_json = b"[1, 2]"  # not a JSON object
    assert session.start(bad.SerializeToString())
    wait_for(lambda: run_id in replies.refused, "the refusal")
    assert replies.refused[run_id].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    good_id, encoded = request(GOOD, {"x": 2})
    assert session.start(encoded)
    wait_for(lambda: replies.result(good_id) is not None, "the next run's result")
    assert not session.ended
    session.close()


def test_runs_go_on_beside_long_ones_and_refusals_are_what_run_would_raise() -> None:
    engine = EngineProcess("--engine-id", "sess", "--capacity", "2")
    try:
        replies = Replies()
        session = session_to(engine.address, replies)
        # A spinning run holds one slot while short runs come and go in the other.
        spins = [request(SPIN)]
        assert session.start(spins[0][1])
        wait_for(lambda: replies.started(spins[0][0], "s"), "the spin to start")
        for i in range(30):
            run_id, encoded = request(GOOD, {"x": i})
            assert session.start(encoded)
            wait_for(lambda: replies.result(run_id) is not None, f"run {i}'s result")  # noqa: B023
            result = result_from_proto(replies.result(run_id))  # type: ignore[arg-type]
            assert result.outputs["b"] == {"w": (i + 1) * 2}
            assert {e.run_id for e in replies.events[run_id]} == {run_id}
        # Refusals come back per run, and map to the exceptions Run raises.
        bad_id, encoded = request({"id": "x", "nodes": [{"id": "a", "lua": "return {"}]})
        assert session.start(encoded)
        wait_for(lambda: bad_id in replies.refused, "the bad run's refusal")
        invalid = refusal_error(replies.refused[bad_id], engine.address, bad_id)
        assert type(invalid) is InvalidRequest
        assert invalid.code == "INVALID_ARGUMENT"
        assert "workflow.nodes" in str(invalid)
        assert f"engine {engine.address}: run {bad_id}: " in str(invalid)
        # Past capacity: busy, not a failure of the run.
        spins.append(request(SPIN))
        assert session.start(spins[1][1])
        wait_for(lambda: replies.started(spins[1][0], "s"), "the second spin to start")
        busy_id, encoded = request(GOOD, {"x": 1})
        assert session.start(encoded)
        wait_for(lambda: busy_id in replies.refused, "the refusal at capacity")
        busy = refusal_error(replies.refused[busy_id], engine.address, busy_id)
        assert type(busy) is EngineBusy
        assert busy.code == "RESOURCE_EXHAUSTED"
        assert "capacity" in str(busy)
        # Cancels through the session: the runs end cancelled; the session goes on.
        for spin_id, _ in spins:
            assert session.cancel(spin_id)
        for spin_id, _ in spins:
            wait_for(lambda: replies.result(spin_id) is not None, "a cancelled spin's end")  # noqa: B023
            cancelled = result_from_proto(replies.result(spin_id))  # type: ignore[arg-type]
            assert cancelled.status is RunStatus.CANCELLED
        assert not session.ended
        session.close()
    finally:
        engine.kill()


def test_the_engine_sends_the_results_json_when_asked(engine: EngineProcess) -> None:
    # The orchestrator stores this text as the run's result: it must read back exactly as
    # the result's dict, for outputs, failures with tracebacks, skipped nodes alike.
    spec = {
        "id": "mixed",
        "nodes": [
            {"id": "a", "lua": 'return {v = inputs.x + 1, s = "\\u{fc}\\n", n = {1, 2.5}}'},
            {"id": "b", "lua": 'error("boom")'},
            {"id": "c", "deps": ["b"], "noop": True},
            {"id": "d", "noop": True},
        ],
    }

    def result(workflow: dict[str, Any] = spec, **kw: Any) -> pb.RunResult:
        replies = Replies()
        session = session_to(engine.address, replies)
        run_id = uuid.uuid4().hex
        sent = build_run_request(workflow, {"x": 1}, run_id=run_id, **kw)
        assert session.start(sent.SerializeToString())
        wait_for(lambda: replies.result(run_id) is not None, "the result")
        session.close()
        (last,) = [e for e in replies.events[run_id] if e.HasField("result")]
        return last.result

    sent = result(result_json=True)
    decoded = result_from_proto(sent)
    assert decoded.status is RunStatus.FAILED
    assert json.loads(sent.result_json) == decoded.to_dict()
    assert decoded.to_dict()["nodes"]["b"]["error"]["traceback"]
    # Without it, the text is built here, and is the same.
    assert json.loads(result_json_from_proto(sent)) == decoded.to_dict()
    plain = result()
    assert plain.result_json == b""
    assert json.loads(result_json_from_proto(plain)) == result_from_proto(plain).to_dict()
    # A large result is left to the caller: the text would carry its outputs twice.
    big_spec = {"id": "big", "nodes": [{"id": "a", "lua": 'return {s = string.rep("x", 100000)}'}]}
    big = result(big_spec, result_json=True)
    assert big.result_json == b""
    assert json.loads(result_json_from_proto(big))["outputs"]["a"]["s"] == "x" * 100000


def test_a_cancel_sent_while_a_python_run_is_being_prepared_still_cancels_it() -> None:
    """Runs with Python nodes are prepared off the session's intake (the import takes a
    second here) and registered after; a cancel right behind the start must not be lost."""
    engine = EngineProcess("--engine-id", "slow-import")
    try:
        replies = Replies()
        session = session_to(engine.address, replies)
        spec = {"id": "slow", "nodes": [{"id": "hold", "python": "slow_import_tasks:hold"}]}
        run_id, encoded = request(spec)
        assert session.start(encoded)
        assert session.cancel(run_id)
        wait_for(lambda: replies.result(run_id) is not None, "the cancelled run's end", timeout=15)
        assert result_from_proto(replies.result(run_id)).status is RunStatus.CANCELLED  # type: ignore[arg-type]
        session.close()
    finally:
        engine.kill()


def test_a_killed_engine_ends_the_session() -> None:
    engine = EngineProcess("--engine-id", "doomed")
    try:
        replies = Replies()
        session = session_to(engine.address, replies)
        run_id, encoded = request(SPIN)
        assert session.start(encoded)
        wait_for(lambda: replies.started(run_id, "s"), "the spin to start")
        engine.signal(signal.SIGKILL)
        assert replies.ended.wait(10)
        assert replies.end is not None
        assert replies.end[0] != CANCELLED
        assert session.ended
    finally:
        engine.kill()


def test_a_callback_that_raises_is_reported_and_later_replies_still_come(
    engine: EngineProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    replies = Replies()
    failed = threading.Event()

    def on_replies(messages: list[bytes]) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a broken subscriber")
        replies.on_replies(messages)

    session = open_session(
        engine.address,
        on_replies,
        replies.on_end,
        max_message_bytes=1 << 20,
        keepalive=10.0,
    )
    _first_id, encoded = request(GOOD)
    assert session.start(encoded)
    wait_for(failed.is_set, "the first hand-over")
    wait_for(lambda: bool(reported), "the error to be reported")
    assert isinstance(reported[0], RuntimeError)
    run_id, encoded = request(GOOD, {"x": 5})
    assert session.start(encoded)
    wait_for(lambda: replies.result(run_id) is not None, "a result after the failed call")
    session.close()


def test_an_engine_of_another_protocol_ends_the_session_saying_so() -> None:
    """Stand-in for an engine of an older dagengine (session protocol 1): a grpcio server
    whose Session sends its headers at once without a protocol, then never answers."""

    def session_handler(
        requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        context.send_initial_metadata(())
        for _ in requests:
            pass
        return iter(())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "dagengine.v1.EngineService",
                {"Session": grpc.stream_stream_rpc_method_handler(session_handler)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert "speaks session protocol 1, this client 2" in unavailable_end(port)
    finally:
        server.stop(None)


def test_a_forked_child_cannot_use_the_sessions_thread(engine: EngineProcess) -> None:
    replies = Replies()
    inherited = session_to(engine.address, replies)  # the thread exists in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its sessions thread did not survive the fork
        code = 1
        try:
            # A session inherited from the parent is ended: nothing would ever answer.
            if not inherited.ended or inherited.start(request(GOOD)[1]):
                code = 3
            else:
                inherited.close()  # touches nothing the parent's threads held
                session_to(engine.address, Replies())
        except Exception as exc:
            code = 0 if "after fork()" in str(exc) else 2
        os.write(write, bytes([code]))
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"\x00"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    # The parent's session is untouched.
    run_id, encoded = request(GOOD, {"x": 1})
    assert inherited.start(encoded)
    wait_for(lambda: replies.result(run_id) is not None, "the parent's run")
    inherited.close()
