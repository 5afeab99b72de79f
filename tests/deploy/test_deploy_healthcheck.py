"""deploy/healthcheck.py, the image's health check, against stand-in servers on loopback: an
in-process grpc.health.v1 server (grpcio-health-checking's servicer, standing in for an
engine) and a stdlib HTTP server (standing in for `dagengine serve`'s /healthz)."""

from __future__ import annotations

import datetime
import importlib.util
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy_support import DEPLOY
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[health.HealthServicer]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("PORT", str(port))
    monkeypatch.delenv("DAGENGINE_TLS_CERT", raising=False)
    yield servicer
    server.stop(None)


def test_engine_mode(healthcheck: ModuleType, health_server: health.HealthServicer) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    health_server.set("", serving)
    health_server.set("dagengine.v1.EngineService", not_serving)  # draining
    assert healthcheck.main(["engine"]) == 0
    assert healthcheck.main(["engine", "--service", "dagengine.v1.EngineService"]) == 1
    health_server.set("dagengine.v1.EngineService", serving)
    assert healthcheck.main(["engine", "--service", "dagengine.v1.EngineService"]) == 0
    assert healthcheck.main(["engine", "--service", "unknown.Service"]) == 1  # NOT_FOUND


def test_engine_mode_nothing_listening(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PORT", str(port))
    assert healthcheck.main(["engine"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_serve_mode(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch, status: int, code: int
) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("DAGENGINE_HTTP_PORT", str(server.server_address[1]))
        assert healthcheck.main(["serve"]) == code
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_serve_mode_nothing_listening(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    monkeypatch.setenv("DAGENGINE_HTTP_PORT", str(port))
    assert healthcheck.main(["serve"]) == 1


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA and one certificate for both sides (server and client auth, SAN workflow-engines),
    as the tls component expects in its Secret."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workflow-engines")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("workflow-engines")]), False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {name: directory / name for name in files}


def test_engine_mode_mutual_tls(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = _certificates(tmp_path)
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(files["tls.key"].read_bytes(), files["tls.crt"].read_bytes())],
        root_certificates=files["ca.crt"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        monkeypatch.setenv("PORT", str(port))
        # Plaintext against a TLS engine fails.
        monkeypatch.delenv("DAGENGINE_TLS_CERT", raising=False)
        assert healthcheck.main(["engine"]) == 1
        # The engine's own files, as the tls component sets them.
        monkeypatch.setenv("DAGENGINE_TLS_CERT", str(files["tls.crt"]))
        monkeypatch.setenv("DAGENGINE_TLS_KEY", str(files["tls.key"]))
        monkeypatch.setenv("DAGENGINE_TLS_CLIENT_CA", str(files["ca.crt"]))
        monkeypatch.setenv("DAGENGINE_HEALTHCHECK_TLS_SERVER_NAME", "workflow-engines")
        assert healthcheck.main(["engine"]) == 0
        # The certificate is not valid for the address: the server name is what makes it work.
        monkeypatch.delenv("DAGENGINE_HEALTHCHECK_TLS_SERVER_NAME")
        assert healthcheck.main(["engine"]) == 1
    finally:
        server.stop(None)
