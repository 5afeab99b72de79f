"""A network cable between a process and PostgreSQL that a test can pull: :class:`Cable`, a
TCP forwarder on a loopback port.

:meth:`Cable.pull` stops the bytes in both directions without closing anything, as a pulled
cable does: the process's connections stay open (its kernel and the forwarder's keep
answering TCP keepalives, so nothing is noticed, statements just hang), new connections are
accepted and left waiting. :meth:`Cable.plug` lets everything through again, nothing lost,
as TCP retransmission does when a link comes back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Cable"]


class Cable:
    """Forwards ``127.0.0.1:<port>`` to the server of ``url``; :attr:`url` is ``url`` through
    the cable."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        user = f"{parts.username}@" if parts.username else ""
        self.url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="cable-accept", daemon=True).start()

    def pull(self) -> None:
        """Stop every byte (see the module doc)."""
        self._flowing.clear()

    def plug(self) -> None:
        """Let the bytes through again."""
        self._flowing.set()

    def close(self) -> None:
        """Close the forwarder and every connection through it."""
        self._closed = True
        self._flowing.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()
        try:
            server = socket.create_connection(self._target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, server]
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # (what came in just as it was pulled waits too)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
