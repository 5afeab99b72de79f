"""TLS for the engine clients: :class:`TLSConfig` and reading PEM material (bytes, text or
a file)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc

__all__ = ["PemSource", "TLSConfig", "read_pem"]

#: A PEM document, or the path of a file holding one.
PemSource: TypeAlias = "bytes | str | os.PathLike[str]"


def read_pem(source: PemSource, what: str) -> bytes:
    """The PEM bytes of ``source``: bytes as they are, text that is a PEM document encoded,
    anything else read as a file path (``what`` names it in a ``TypeError``)."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{what} must be PEM bytes or a file path, got {type(source).__name__}")
    return Path(source).read_bytes()


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for a client: ``ca_cert`` verifies the engine (``None``: the system's roots);
    ``client_cert`` + ``client_key`` present a certificate for mutual TLS; ``server_name``
    overrides the name checked against the engine's certificate (default: the host of the
    address). Certificates and keys are PEM bytes or file paths."""

    ca_cert: PemSource | None = None
    client_cert: PemSource | None = None
    client_key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLSConfig: client_cert and client_key go together (mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpcio channel credentials (files are read now)."""
        return grpc.ssl_channel_credentials(
            root_certificates=None if self.ca_cert is None else read_pem(self.ca_cert, "ca_cert"),
            private_key=(
                None if self.client_key is None else read_pem(self.client_key, "client_key")
            ),
            certificate_chain=(
                None if self.client_cert is None else read_pem(self.client_cert, "client_cert")
            ),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel options that go with the credentials."""
        if self.server_name is None:
            return []
        return [
            ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.default_authority", self.server_name),
        ]
