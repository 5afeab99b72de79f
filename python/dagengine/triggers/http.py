"""HTTP triggers: ``POST <path>`` with ``{"inputs": {...}}`` starts a workflow run.

The trigger holds the configuration and the authentication check; the requests themselves are
served by the one ASGI app of :mod:`dagengine.api` (the REST API and every HTTP trigger share
a port). For the original system's shape — a trigger with its own port — pass ``port=``:
:meth:`HTTPTrigger.start` then serves an app with just this trigger on that port and raises
:class:`~dagengine.TriggerError` if the port is taken.

Authentication (``auth``):
    ``none``; ``bearer`` — ``Authorization: Bearer <secret>``; ``hmac`` — ``X-Signature:
    sha256=<hex>``, the HMAC-SHA256 of the raw body keyed with the secret (GitHub's webhook
    scheme). Both are compared with :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from dagengine.exceptions import TriggerError
from dagengine.triggers.base import Executor, Trigger

if TYPE_CHECKING:
    from dagengine.api.server import ServerThread

__all__ = ["AUTH_MODES", "DEFAULT_MAX_BODY_BYTES", "MODES", "RESERVED_PATHS", "HTTPTrigger"]

MODES: Final = ("sync", "async")
AUTH_MODES: Final = ("none", "bearer", "hmac")
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
#: Paths of the REST API; a trigger path may not be one of them or lie under one.
RESERVED_PATHS: Final = ("/workflows", "/runs", "/healthz", "/metrics", "/openapi.json")

_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+/?$")

Mode = Literal["sync", "async"]
Auth = Literal["none", "bearer", "hmac"]


class HTTPTrigger(Trigger):
    """Start ``workflow_id`` (at ``version``, default latest) on ``POST path``.

    ``mode="sync"`` answers 200 with the run's result (the original system's response:
    ``trigger_id``, ``workflow_id``, ``success``, ``duration_ns``, ``outputs``, ``error``,
    plus ``run_id``) — or 202 if the run takes longer than ``sync_timeout`` seconds;
    ``mode="async"`` answers 202 with the run id at once. ``auth`` and ``secret``: see the
    module docs. ``max_body_bytes`` bounds the request body (413 past it).
    """

    type = "http"

    def __init__(
        self,
        id: str,
        path: str,
        workflow_id: str,
        *,
        version: str | None = None,
        mode: Mode | str = "sync",
        auth: Auth | str = "none",
        secret: str | bytes | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        sync_timeout: float = 300.0,
        inputs: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        super().__init__(id)
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise TriggerError(
                f"http trigger {id!r}: invalid path {path!r} (an absolute URL path like "
                "/hooks/build)",
                trigger_id=id,
            )
        path = path.rstrip("/") or "/"
        for reserved in RESERVED_PATHS:
            if path == reserved or path.startswith(reserved + "/"):
                raise TriggerError(
                    f"http trigger {id!r}: path {path!r} is taken by the REST API ({reserved})",
                    trigger_id=id,
                )
        if mode not in MODES:
            raise TriggerError(f"http trigger {id!r}: mode must be sync or async", trigger_id=id)
        if auth not in AUTH_MODES:
            raise TriggerError(
                f"http trigger {id!r}: auth must be one of {', '.join(AUTH_MODES)}", trigger_id=id
            )
        if auth != "none" and not secret:
            raise TriggerError(f"http trigger {id!r}: auth {auth} needs a secret", trigger_id=id)
        if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
            raise TriggerError(f"http trigger {id!r}: max_body_bytes must be > 0", trigger_id=id)
        self.path = path
        self.workflow_id = workflow_id
        self.version = version
        self.mode = mode
        self.auth = auth
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.max_body_bytes = max_body_bytes
        self.sync_timeout = sync_timeout
        self.inputs = dict(inputs or {})
        self.host = host
        self.port = port
        self._server: ServerThread | None = None

    # -- life -----------------------------------------------------------------------------

    def _start(self, executor: Executor) -> None:
        if self.port is None:
            return  # served by the app it is added to
        from dagengine.api.app import create_app
        from dagengine.api.server import ServerThread

        app = create_app(executor, triggers=[self], metrics=False)
        server = ServerThread(app, self.host, self.port)
        try:
            server.start()
        except OSError as exc:
            raise TriggerError(
                f"http trigger {self.id!r}: cannot listen on {self.host}:{self.port}: {exc}",
                trigger_id=self.id,
            ) from None
        self._server = server

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def url(self) -> str | None:
        """``http://host:port/path`` when the trigger serves its own port."""
        server = self._server
        return f"http://{server.host}:{server.port}{self.path}" if server is not None else None

    # -- authentication -------------------------------------------------------------------

    def authorized(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Whether a request with these (lower-case) ``headers`` and raw ``body`` may fire."""
        if self.auth == "none":
            return True
        secret = self._secret or b""
        if self.auth == "bearer":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
            return hmac.compare_digest(token.strip().encode(), secret)
        signature = headers.get("x-signature", "")
        prefix, _, given = signature.partition("=")
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        # compare_digest wants ASCII for str; bytes avoids that concern for odd input.
        return prefix == "sha256" and hmac.compare_digest(
            given.strip().lower().encode("utf-8", "replace"), expected.encode()
        )

    @property
    def auth_before_body(self) -> bool:
        """Bearer tokens are checked before the body is read; HMAC needs the body."""
        return self.auth in ("none", "bearer")
