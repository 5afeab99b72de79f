"""The API's busiest routes served without Starlette's request/response machinery: ``POST``
on an HTTP trigger's path and ``POST /workflows/{id}/runs`` (see ``_App`` in
:mod:`dagengine.api.app`). They read the request through a :class:`RawRequest` (the headers
and the body stream, the only parts of a Starlette ``Request`` they use) and answer with
:func:`send_json`: the same status, headers and body a ``JSONResponse`` sends, without the
middleware stack, the router's matching of every route or the response object (under a
trigger load that layer was ~5% of the serving process's time per request)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

__all__ = ["RawRequest", "send_json"]


class RawRequest:
    """What the fast routes read of a request: ``headers`` (lower-case names; of a name sent
    twice, the first value, as Starlette's ``Headers.get``), ``path_params`` and the body
    (:meth:`stream`)."""

    __slots__ = ("_receive", "headers", "path_params")

    def __init__(
        self, scope: Scope, receive: Receive, path_params: dict[str, str] | None = None
    ) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            if key not in headers:
                headers[key] = value.decode("latin-1")
        self.headers = headers
        self.path_params = path_params or {}
        self._receive = receive

    async def stream(self) -> AsyncIterator[bytes]:
        """The body's chunks as they come (``ClientDisconnect`` if the client goes first)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if body:
                    yield body
                if not message.get("more_body", False):
                    return
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()


async def send_json(
    send: Send, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> None:
    """Answer ``payload`` as JSON with ``status`` (and ``headers``), byte for byte what
    Starlette's ``JSONResponse`` sends."""
    body = json.dumps(
        payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
