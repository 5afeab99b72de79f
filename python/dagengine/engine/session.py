"""The ``Session`` client: many runs over one ``EngineService.Session`` stream of an engine,
with no gRPC call per run (most of what a run costs its caller) — the orchestrator's path to
its remote engines. There is one implementation, driven from Rust on the core's
``dagengine-io`` thread (:class:`EngineSession`, from the native core); :func:`open_session`
opens one with a :class:`TLSConfig`.

Requests and replies cross as encoded protobuf: ``start`` takes an encoded ``RunRequest``
(:func:`~dagengine.engine.build_run_request`), ``on_replies`` gets encoded
``SessionReplies``. A run the engine refuses comes back in band
(:func:`~dagengine.engine.refusal_error` makes it the exception ``Run`` would have raised);
the end of the stream fails every run still on it
(:func:`~dagengine.engine.session_ended_error`).
"""

from __future__ import annotations

from collections.abc import Callable

from dagengine._core import EngineSession
from dagengine.engine._channel import DEFAULT_KEEPALIVE_SECONDS, DEFAULT_MAX_MESSAGE_BYTES
from dagengine.engine._tls import TLSConfig, read_pem

__all__ = ["EngineSession", "open_session"]


def open_session(
    address: str,
    on_replies: Callable[[list[bytes]], None],
    on_end: Callable[[int, str], None],
    *,
    tls: TLSConfig | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive: float = DEFAULT_KEEPALIVE_SECONDS,
    connect_timeout: float = 5.0,
) -> EngineSession:
    """A new :class:`EngineSession` to the engine at ``address`` (``host:port``); it
    connects in the background (within ``connect_timeout`` seconds, or it ends
    ``UNAVAILABLE``). ``on_replies(messages)`` gets the encoded ``SessionReplies`` as they
    come, ``on_end(code, message)`` is called once when the session is over (see
    :class:`EngineSession`); both on the ``dagengine-io`` thread. ``tls`` turns on TLS (its
    files are read now). Raises :class:`~dagengine.EngineUnavailable` for an address or TLS
    material the session cannot use."""
    if tls is None:
        return EngineSession(
            address,
            on_replies,
            on_end,
            max_message_bytes=max_message_bytes,
            keepalive=keepalive,
            connect_timeout=connect_timeout,
        )
    return EngineSession(
        address,
        on_replies,
        on_end,
        max_message_bytes=max_message_bytes,
        keepalive=keepalive,
        connect_timeout=connect_timeout,
        tls=True,
        ca_cert=None if tls.ca_cert is None else read_pem(tls.ca_cert, "ca_cert"),
        client_cert=None if tls.client_cert is None else read_pem(tls.client_cert, "client_cert"),
        client_key=None if tls.client_key is None else read_pem(tls.client_key, "client_key"),
        server_name=tls.server_name,
    )
