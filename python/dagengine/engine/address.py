"""``host:port`` addresses of engines and orchestrators: the one parser (and its inverse)
that the engine process, the command line and the orchestrator's discovery share."""

from __future__ import annotations

__all__ = ["join_address", "split_address"]


def split_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port, around surrounding
    blanks; raises ``ValueError`` when it is not one: no host, a host with blanks in it, a
    bare IPv6 address (it needs brackets to carry a port), a port that is not a decimal
    number in 1-65535."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # a bare IPv6 address needs brackets to carry a port
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
    if not sep or not host or not 0 < port < 65536 or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not host:port (e.g. engine-1:50051 or [::1]:50051)")
    return host, port


def join_address(host: str, port: int) -> str:
    """``host:port``, with the host in brackets when it is an IPv6 address (has a colon):
    the inverse of :func:`split_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
