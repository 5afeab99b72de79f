"""Signed webhooks: ``hmac-timestamp`` (Stripe's scheme: a signed timestamp within a tolerance
window, exact replays refused) over a real socket, beside the plain GitHub ``hmac`` scheme.
Every refusal is a 401 naming its reason."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from dagengine.api import ServerThread, create_app
from dagengine.exceptions import ConfigError, TriggerError
from dagengine.orchestrator import Orchestrator
from dagengine.serve import build_triggers
from dagengine.triggers import HTTPTrigger
from dagengine.triggers import http as http_module
from dagengine.triggers.http import SIGNATURE_HEADER, sign_timestamped

pytestmark = pytest.mark.integration

SECRET = "whsec-test"
SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {n = inputs.n}"}]}


@dataclass
class Served:
    client: httpx.Client
    triggers: dict[str, HTTPTrigger]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    orch = Orchestrator(store=":memory:")
    orch.register_workflow("wf", "1.0.0", SPEC)
    signed: dict[str, Any] = {"mode": "async", "auth": "hmac-timestamp", "secret": SECRET}
    triggers = [
        HTTPTrigger("ts", "/hooks/ts", "wf", **signed),
        HTTPTrigger("short", "/hooks/short", "wf", tolerance="10s", **signed),
        HTTPTrigger("gh", "/hooks/gh", "wf", mode="async", auth="hmac", secret=SECRET),
    ]
    app = create_app(orch, triggers=triggers)
    for trigger in triggers:
        trigger.start(orch)
    server = ServerThread(app).start()
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        yield Served(client, {t.id: t for t in triggers})
    finally:
        client.close()
        for trigger in triggers:
            trigger.stop()
        server.stop()
        app.state.api.close()
        orch.stop()


def _body(n: int) -> bytes:
    return json.dumps({"inputs": {"n": n}}).encode()


def _post(served: Served, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return served.client.post(path, content=body, headers=headers)


def _error(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    message: str = response.json()["error"]
    return message


def test_a_valid_timestamped_signature_is_accepted(served: Served) -> None:
    body = _body(1)
    r = _post(served, "/hooks/ts", body, {SIGNATURE_HEADER: sign_timestamped(SECRET, body)})
    assert r.status_code == 202, r.text
    assert r.json()["run_id"]


def test_the_signature_is_stripes_scheme(served: Served) -> None:
    # Written out by hand, independently of sign_timestamped: t=<unix>,v1=<hex of "t.body">.
    body = _body(2)
    t = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={t},v0=ignored,v1={digest.upper()}"
    assert _post(served, "/hooks/ts", body, {SIGNATURE_HEADER: header}).status_code == 202


def test_an_old_timestamp_is_refused(served: Served) -> None:
    # A request captured an hour ago, replayed with its (valid) signature.
    body = _body(3)
    old = sign_timestamped(SECRET, body, int(time.time()) - 3600)
    message = _error(_post(served, "/hooks/ts", body, {SIGNATURE_HEADER: old}))
    assert "old, past the tolerance of 300s" in message


def test_a_future_timestamp_is_refused(served: Served) -> None:
    body = _body(4)
    ahead = sign_timestamped(SECRET, body, int(time.time()) + 3600)
    message = _error(_post(served, "/hooks/ts", body, {SIGNATURE_HEADER: ahead}))
    assert "in the future, past the tolerance of 300s" in message


def test_the_tolerance_is_configurable(served: Served) -> None:
    body = _body(5)
    header = sign_timestamped(SECRET, body, int(time.time()) - 60)
    assert _post(served, "/hooks/ts", body, {SIGNATURE_HEADER: header}).status_code == 202
    message = _error(_post(served, "/hooks/short", body, {SIGNATURE_HEADER: header}))
    assert "past the tolerance of 10s" in message


def test_a_tampered_body_is_refused(served: Served) -> None:
    header = sign_timestamped(SECRET, _body(6))
    message = _error(_post(served, "/hooks/ts", _body(7), {SIGNATURE_HEADER: header}))
    assert "does not match the body and its timestamp" in message
    # So is a timestamp moved forward on a captured request (the old one is signed).
    body = _body(8)
    captured = sign_timestamped(SECRET, body, int(time.time()) - 3600)
    moved = captured.replace(captured.split(",")[0], f"t={int(time.time())}")
    message = _error(_post(served, "/hooks/ts", body, {SIGNATURE_HEADER: moved}))
    assert "does not match" in message


def test_a_wrong_secret_is_refused(served: Served) -> None:
    body = _body(9)
    header = sign_timestamped("other", body)
    assert "does not match" in _error(_post(served, "/hooks/ts", body, {SIGNATURE_HEADER: header}))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Dagengine-Signature"),
        ({SIGNATURE_HEADER: ""}, "malformed X-Dagengine-Signature"),
        ({SIGNATURE_HEADER: "v1=abc"}, "malformed"),
        ({SIGNATURE_HEADER: "t=123"}, "malformed"),
        ({SIGNATURE_HEADER: "t=soon,v1=abc"}, "malformed"),
        ({SIGNATURE_HEADER: "t=1,t=2,v1=abc"}, "more than one t="),
        ({SIGNATURE_HEADER: "t=1,v1=\xe9".encode("latin-1")}, "does not match"),
        # The GitHub header is not enough for the timestamped scheme.
        ({"X-Signature": "sha256=00"}, "missing X-Dagengine-Signature"),
    ],
)
def test_missing_or_malformed_headers_are_refused(
    served: Served, headers: dict[str, Any], reason: str
) -> None:
    assert reason in _error(_post(served, "/hooks/ts", _body(10), headers))


def test_an_exact_replay_inside_the_window_is_refused(served: Served) -> None:
    body = _body(11)
    header = sign_timestamped(SECRET, body)
    assert _post(served, "/hooks/ts", body, {SIGNATURE_HEADER: header}).status_code == 202
    message = _error(_post(served, "/hooks/ts", body, {SIGNATURE_HEADER: header}))
    assert "replayed request" in message
    # The same body signed again (a new timestamp, as a sender's retry does) is accepted.
    again = sign_timestamped(SECRET, body, int(time.time()) + 1)
    assert _post(served, "/hooks/ts", body, {SIGNATURE_HEADER: again}).status_code == 202


def test_secret_rotation_with_several_signatures(served: Served) -> None:
    body = _body(12)
    t = int(time.time())
    old = sign_timestamped("retired-secret", body, t).split(",")[1]
    header = f"{sign_timestamped(SECRET, body, t)},{old}"
    assert _post(served, "/hooks/ts", body, {SIGNATURE_HEADER: header}).status_code == 202


def test_the_github_scheme_still_works(served: Served) -> None:
    body = _body(13)
    sign = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert _post(served, "/hooks/gh", body, {"X-Signature": sign}).status_code == 202
    # GitHub's own header name too.
    assert _post(served, "/hooks/gh", body, {"X-Hub-Signature-256": sign}).status_code == 202
    assert "missing X-Signature" in _error(_post(served, "/hooks/gh", body, {}))
    assert "wrong X-Signature" in _error(
        _post(served, "/hooks/gh", _body(14), {"X-Signature": sign})
    )


def test_remembered_signatures_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_module, "_MAX_SEEN", 3)
    trigger = HTTPTrigger("t", "/t", "wf", auth="hmac-timestamp", secret=SECRET)
    now = [1_000_000.0]
    trigger._clock = lambda: now[0]
    for n in range(5):
        header = sign_timestamped(SECRET, _body(n), int(now[0]))
        assert trigger.auth_problem({SIGNATURE_HEADER.lower(): header}, _body(n)) is None
    assert len(trigger._seen) == 3
    # Past the window the remembered signatures are dropped (their requests are stale anyway).
    now[0] += 301
    header = sign_timestamped(SECRET, _body(9), int(now[0]))
    assert trigger.auth_problem({SIGNATURE_HEADER.lower(): header}, _body(9)) is None
    assert len(trigger._seen) == 1


def test_configuration() -> None:
    assert HTTPTrigger("t", "/t", "wf", auth="hmac-timestamp", secret="s").tolerance == 300.0
    trigger = HTTPTrigger("t", "/t", "wf", auth="hmac-timestamp", secret="s", tolerance="5m")
    assert trigger.tolerance == 300.0
    assert not trigger.auth_before_body
    with pytest.raises(TriggerError, match="tolerance applies to auth hmac-timestamp only"):
        HTTPTrigger("t", "/t", "wf", auth="hmac", secret="s", tolerance=60)
    with pytest.raises(TriggerError, match="tolerance must be > 0"):
        HTTPTrigger("t", "/t", "wf", auth="hmac-timestamp", secret="s", tolerance=0)
    with pytest.raises(TriggerError, match="tolerance"):
        HTTPTrigger("t", "/t", "wf", auth="hmac-timestamp", secret="s", tolerance="soon")
    with pytest.raises(TriggerError, match="auth hmac-timestamp needs a secret"):
        HTTPTrigger("t", "/t", "wf", auth="hmac-timestamp")
    # The serve config: the new mode with a tolerance, and an existing hmac trigger unchanged.
    built = build_triggers(
        [
            {"type": "http", "id": "a", "path": "/a", "workflow_id": "wf",
             "auth": "hmac-timestamp", "secret": "s", "tolerance": "2m"},
            {"type": "http", "id": "b", "path": "/b", "workflow_id": "wf", "auth": "hmac",
             "secret": "s"},
        ]
    )  # fmt: skip
    assert [(t.auth, t.tolerance) for t in built if isinstance(t, HTTPTrigger)] == [
        ("hmac-timestamp", 120.0),
        ("hmac", 300.0),
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"path": "/runs/x"}, r"triggers\[0\]: .*path '/runs/x' is taken by the REST API"),
        ({"max_body_bytes": "big"}, r"triggers\[0\]\.max_body_bytes: expected an integer"),
        ({"max_body_bytes": 10**30}, r"triggers\[0\]\.max_body_bytes: expected an integer"),
        ({"sync_timeout": "soon"}, r"triggers\[0\]\.sync_timeout: expected seconds"),
        ({"sync_timeout": 1e300}, r"triggers\[0\]\.sync_timeout: expected seconds"),
    ],
)
def test_a_bad_http_trigger_in_the_serve_config_names_its_place(
    extra: dict[str, object], message: str
) -> None:
    # A ConfigError naming triggers[i] (a one-line exit 2 from `dagengine serve`), never a
    # ValueError or TypeError traceback.
    spec = {"type": "http", "id": "h", "path": "/h", "workflow_id": "wf", **extra}
    with pytest.raises(ConfigError, match=message):
        build_triggers([spec])
