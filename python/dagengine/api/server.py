"""Serve an ASGI app with uvicorn on a background thread (``dagengine serve``, HTTP triggers
with their own port, tests).

The socket is bound here, before uvicorn starts, so a port that is taken raises ``OSError`` in
the caller instead of being logged by uvicorn on its thread; ``port=0`` picks a free port,
readable afterwards as :attr:`ServerThread.port`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from dagengine.logconfig import is_configured

__all__ = ["ServerThread"]


class ServerThread:
    """uvicorn serving ``app`` on ``host``:``port`` in a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        graceful_timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._log_level = log_level
        self._graceful = graceful_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, timeout: float = 10.0) -> ServerThread:
        """Bind and serve; returns once the server accepts connections. ``OSError`` if the
        address cannot be bound, ``RuntimeError`` if uvicorn does not come up."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            # With the process's logging set up (--log-format), uvicorn's records go through
            # it instead of uvicorn's own handlers.
            log_config=None if is_configured() else LOGGING_CONFIG,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(max(1, self._graceful)),
            backlog=2048,
        )
        server = uvicorn.Server(config)
        self._server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="dagengine-http", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the HTTP server on {self.host}:{self.port} did not start")
            time.sleep(0.005)
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to the graceful timeout), and
        join the thread."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout if timeout is not None else self._graceful + 5.0)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
