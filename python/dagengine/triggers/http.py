"""HTTP triggers: ``POST <path>`` with ``{"inputs": {...}}`` starts a workflow run.

The trigger holds the configuration and the authentication check; the requests themselves are
served by the one ASGI app of :mod:`dagengine.api` (the REST API and every HTTP trigger share
a port; :mod:`dagengine.api.hooks` fires them and refuses a path the REST API takes). For the
original system's shape — a trigger with its own port — pass ``port=``:
:meth:`HTTPTrigger.start` then has the API serve just this trigger on that port and raises
:class:`~dagengine.TriggerError` if the port is taken.

Authentication (``auth``):
    ``none``; ``bearer`` — ``Authorization: Bearer <secret>``; ``hmac`` — ``X-Signature:
    sha256=<hex>`` (or GitHub's own header, ``X-Hub-Signature-256``), the HMAC-SHA256 of the
    raw body keyed with the secret (GitHub's webhook scheme: a captured request can be
    replayed); ``hmac-timestamp`` — ``X-Dagengine-Signature: t=<unix seconds>,v1=<hex>``,
    the HMAC-SHA256 of ``"<t>.<body>"`` (Stripe's scheme): refused when ``t`` is further
    than ``tolerance`` (default 300 s) from now either way, and when the same signature was
    already accepted within the window. Several ``v1=`` (secret rotation) may be given, other
    elements are ignored. Every comparison uses :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from dagengine._units import parse_duration
from dagengine.exceptions import TriggerError
from dagengine.triggers.base import Executor, Trigger

if TYPE_CHECKING:
    from dagengine.api.server import ServerThread

__all__ = [
    "AUTH_MODES",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_TOLERANCE",
    "MODES",
    "SIGNATURE_HEADER",
    "HTTPTrigger",
    "sign_timestamped",
]

MODES: Final = ("sync", "async")
AUTH_MODES: Final = ("none", "bearer", "hmac", "hmac-timestamp")
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
#: ``hmac-timestamp``: the header, and how far (seconds) its time may be from now.
SIGNATURE_HEADER: Final = "X-Dagengine-Signature"
DEFAULT_TOLERANCE: Final = 300.0
#: At most this many accepted signatures are remembered to refuse replays in the window (the
#: oldest is forgotten first).
_MAX_SEEN: Final = 10_000
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+/?$")

Mode = Literal["sync", "async"]
Auth = Literal["none", "bearer", "hmac", "hmac-timestamp"]


def sign_timestamped(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Dagengine-Signature`` value for ``body`` (``hmac-timestamp``), at
    ``timestamp`` (unix seconds, default now): ``t=<timestamp>,v1=<hex HMAC-SHA256 of
    "<timestamp>.<body>">``."""
    key = secret.encode() if isinstance(secret, str) else secret
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(key, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class HTTPTrigger(Trigger):
    """Start ``workflow_id`` (at ``version``, default latest) on ``POST path``.

    ``mode="sync"`` answers 200 with the run's result (the original system's response:
    ``trigger_id``, ``workflow_id``, ``success``, ``duration_ns``, ``outputs``, ``error``,
    plus ``run_id``) — or 202 if the run takes longer than ``sync_timeout`` seconds;
    ``mode="async"`` answers 202 with the run id at once. ``auth`` and ``secret``: see the
    module docs; ``tolerance`` (seconds or a duration like ``"5m"``) is the window of
    ``hmac-timestamp``. ``max_body_bytes`` bounds the request body (413 past it).
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
        tolerance: float | str | None = None,
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
        if mode not in MODES:
            raise TriggerError(f"http trigger {id!r}: mode must be sync or async", trigger_id=id)
        if auth not in AUTH_MODES:
            raise TriggerError(
                f"http trigger {id!r}: auth must be one of {', '.join(AUTH_MODES)}", trigger_id=id
            )
        if auth != "none" and not secret:
            raise TriggerError(f"http trigger {id!r}: auth {auth} needs a secret", trigger_id=id)
        if tolerance is not None and auth != "hmac-timestamp":
            raise TriggerError(
                f"http trigger {id!r}: tolerance applies to auth hmac-timestamp only",
                trigger_id=id,
            )
        try:
            window = parse_duration(
                DEFAULT_TOLERANCE if tolerance is None else tolerance, what="tolerance"
            )
        except (TypeError, ValueError) as exc:
            raise TriggerError(f"http trigger {id!r}: {exc}", trigger_id=id) from None
        if window <= 0:
            raise TriggerError(f"http trigger {id!r}: tolerance must be > 0", trigger_id=id)
        if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
            raise TriggerError(f"http trigger {id!r}: max_body_bytes must be > 0", trigger_id=id)
        self.path = path
        self.workflow_id = workflow_id
        self.version = version
        self.mode = mode
        self.auth = auth
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.tolerance = window
        #: hmac-timestamp: accepted signatures -> when they leave the window.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._clock: Callable[[], float] = time.time
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
        from dagengine.api.app import serve_trigger

        self._server = serve_trigger(self, executor)

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
        return self.auth_problem(headers, body) is None

    def auth_problem(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Why a request with these (lower-case) ``headers`` and raw ``body`` may not fire
        (the 401's message), or ``None`` if it may. With ``hmac-timestamp`` an accepted
        signature is remembered: the same request again within the window is refused."""
        if self.auth == "none":
            return None
        secret = self._secret or b""
        if self.auth == "bearer":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("utf-8", "replace"), secret
            ):
                return "missing or wrong bearer token"
            return None
        if self.auth == "hmac":
            return _check_hmac(headers, body, secret)
        return self._check_timestamped(headers, body, secret)

    def _check_timestamped(
        self, headers: Mapping[str, str], body: bytes, secret: bytes
    ) -> str | None:
        header = headers.get(SIGNATURE_HEADER.lower())
        shape = f"{SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>"
        if header is None:
            return f"missing {shape}"
        stamp: str | None = None
        given: list[str] = []
        for element in header.split(","):
            key, sep, value = element.strip().partition("=")
            if not sep:
                continue
            if key == "t":
                if stamp is not None:
                    return f"malformed {SIGNATURE_HEADER}: more than one t= (expected {shape})"
                stamp = value.strip()
            elif key == "v1":
                given.append(value.strip().lower())
        if stamp is None or not _TIMESTAMP.fullmatch(stamp) or not given:
            return f"malformed {SIGNATURE_HEADER} (expected {shape})"
        expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        matched = False
        for candidate in given:
            # compare_digest wants ASCII for str; bytes avoids that concern for odd input.
            matched |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected.encode())
        if not matched:
            return f"{SIGNATURE_HEADER} does not match the body and its timestamp"
        now = self._clock()
        skew = now - int(stamp)
        if skew > self.tolerance:
            return (
                f"{SIGNATURE_HEADER} timestamp is {skew:.0f}s old, past the tolerance of "
                f"{self.tolerance:g}s (a replayed or delayed request)"
            )
        if -skew > self.tolerance:
            return (
                f"{SIGNATURE_HEADER} timestamp is {-skew:.0f}s in the future, past the "
                f"tolerance of {self.tolerance:g}s (check the sender's clock)"
            )
        with self._seen_lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)
            if expected in self._seen:
                return f"replayed request: this {SIGNATURE_HEADER} was already accepted"
            self._seen[expected] = int(stamp) + self.tolerance
            while len(self._seen) > _MAX_SEEN:
                self._seen.popitem(last=False)
        return None

    @property
    def auth_before_body(self) -> bool:
        """Bearer tokens are checked before the body is read; the HMAC schemes need it."""
        return self.auth in ("none", "bearer")


def _check_hmac(headers: Mapping[str, str], body: bytes, secret: bytes) -> str | None:
    """``hmac``: ``X-Signature`` (or GitHub's ``X-Hub-Signature-256``) ``sha256=<hex>``."""
    signature = headers.get("x-signature")
    if signature is None:
        signature = headers.get("x-hub-signature-256")
    if signature is None:
        return "missing X-Signature (sha256=<hex HMAC-SHA256 of the body>)"
    prefix, _, given = signature.partition("=")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    # compare_digest wants ASCII for str; bytes avoids that concern for odd input.
    if prefix == "sha256" and hmac.compare_digest(
        given.strip().lower().encode("utf-8", "replace"), expected.encode()
    ):
        return None
    return "wrong X-Signature (sha256=<hex HMAC-SHA256 of the body>)"
