#!/usr/bin/env python3
"""Container health check of the dagengine image (Docker HEALTHCHECK, or a Kubernetes exec probe).

    dagengine-healthcheck [engine|serve|auto] [--service NAME]

``engine``: asks ``grpc.health.v1.Health/Check`` on ``127.0.0.1:$PORT`` (50051) for NAME
(default ``""``, the whole server); with ``DAGENGINE_TLS_CERT``/``DAGENGINE_TLS_KEY`` set it
speaks TLS, presenting that certificate as its client certificate (mutual TLS) and trusting
``DAGENGINE_TLS_CLIENT_CA`` (or ``DAGENGINE_TLS_CA``); ``DAGENGINE_HEALTHCHECK_TLS_SERVER_NAME``
is the name checked against the server certificate (it is dialled on 127.0.0.1).
``serve``: ``GET http://127.0.0.1:$DAGENGINE_HTTP_PORT/healthz`` (8080) must answer 2xx.
``auto`` (the default): ``serve`` if PID 1's command line is ``dagengine serve``, else ``engine``.

Exit status 0 when healthy, 1 otherwise (the one line printed says why), as Docker and the
kubelet expect. Kubernetes' native gRPC probes speak plaintext only, so engines serving TLS
use this script as an exec probe instead (deploy/components/tls).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0


def _pid1_mode() -> str:
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "engine"
    return "serve" if b"serve" in argv[1:3] else "engine"


def _tls_credentials() -> object | None:
    import grpc

    cert = os.environ.get("DAGENGINE_TLS_CERT")
    key = os.environ.get("DAGENGINE_TLS_KEY")
    if not (cert and key):
        return None
    ca = os.environ.get("DAGENGINE_TLS_CLIENT_CA") or os.environ.get("DAGENGINE_TLS_CA")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )


def check_engine(service: str) -> str | None:
    """None when SERVING, else why not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{os.environ.get('PORT', '').strip() or '50051'}"
    credentials = _tls_credentials()
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        name = os.environ.get("DAGENGINE_HEALTHCHECK_TLS_SERVER_NAME")
        options = [("grpc.ssl_target_name_override", name)] if name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return None if status == "SERVING" else f"{target} {service or '(server)'}: {status}"


def check_serve() -> str | None:
    """None when /healthz answers 2xx, else why not."""
    url = f"http://127.0.0.1:{os.environ.get('DAGENGINE_HTTP_PORT', '').strip() or '8080'}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            return None if 200 <= reply.status < 300 else f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagengine-healthcheck")
    parser.add_argument("mode", nargs="?", choices=["engine", "serve", "auto"], default="auto")
    parser.add_argument("--service", default="", help="gRPC health service name (engine mode)")
    args = parser.parse_args(argv)
    mode = _pid1_mode() if args.mode == "auto" else args.mode
    problem = check_serve() if mode == "serve" else check_engine(args.service)
    print(f"{mode}: {problem or 'healthy'}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
