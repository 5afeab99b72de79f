"""``dagengine engine``: serve runs over gRPC (an engine process), configured by flags or
the original system's environment variables, with TLS towards its clients and the
orchestrator, and optional self-registration."""

from __future__ import annotations

import argparse
import os
from typing import Any

from dagengine.cli_args import (
    address,
    boolean,
    configure_process_logging,
    duration,
    env_value,
    port_number,
    positive_int,
    positive_number,
    read_file,
)
from dagengine.cli_inputs import BadInput
from dagengine.logconfig import add_logging_arguments

__all__ = ["configure_engine", "run_engine"]

# The original system's environment variables (flags override them).
_ENGINE_ENV = {"engine_id": "ENGINE_ID", "port": "PORT", "capacity": "CAPACITY"}
_TLS_ENV = {
    "tls_cert": "DAGENGINE_TLS_CERT",
    "tls_key": "DAGENGINE_TLS_KEY",
    "tls_client_ca": "DAGENGINE_TLS_CLIENT_CA",
}


def configure_engine(parser: argparse.ArgumentParser) -> None:
    add_logging_arguments(parser)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument(
        "--port", type=port_number, help="port to listen on; 0 picks a free one (env PORT, 50051)"
    )
    parser.add_argument(
        "--capacity",
        type=positive_int,
        metavar="N",
        help="runs at once; more are refused with RESOURCE_EXHAUSTED (env CAPACITY, 10)",
    )
    parser.add_argument(
        "--engine-id", metavar="ID", help="this engine's id (env ENGINE_ID, the host name)"
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE at start (repeatable, or comma-separated); python nodes resolve "
        "their import paths on demand anyway",
    )
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="PEM server certificate chain: serve TLS"
    )
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA bundle: require client certificates it signed (mutual TLS)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=positive_number,
        default=16.0,
        metavar="N",
        help="largest gRPC message either way, in MiB (default: 16)",
    )
    parser.add_argument(
        "--orchestrator",
        type=address,
        metavar="HOST:PORT",
        help="the orchestrator: sub-workflow nodes run through it, and --self-register "
        "registers with it (env ORCHESTRATOR_ADDRESS)",
    )
    parser.add_argument(
        "--orchestrator-tls-ca",
        metavar="FILE",
        help="PEM CA bundle verifying the orchestrator: call it over TLS "
        "(env DAGENGINE_ORCHESTRATOR_TLS_CA; the token: env DAGENGINE_ORCHESTRATOR_TOKEN)",
    )
    parser.add_argument(
        "--orchestrator-tls-cert",
        metavar="FILE",
        help="PEM client certificate for the orchestrator's mutual TLS "
        "(env DAGENGINE_ORCHESTRATOR_TLS_CERT)",
    )
    parser.add_argument(
        "--orchestrator-tls-key",
        metavar="FILE",
        help="PEM key of --orchestrator-tls-cert (env DAGENGINE_ORCHESTRATOR_TLS_KEY)",
    )
    parser.add_argument(
        "--self-register",
        action="store_true",
        default=None,
        help="register with the orchestrator at start and keep heartbeating "
        "(env DAGENGINE_SELF_REGISTER=true)",
    )
    parser.add_argument(
        "--advertise-address",
        type=address,
        metavar="HOST:PORT",
        help="the address the orchestrator should dial (env ADVERTISE_ADDRESS; default: "
        "--host if it is a concrete address, else this machine's IP, with the bound port)",
    )
    parser.add_argument(
        "--drain-grace",
        type=duration,
        default=25.0,
        metavar="DUR",
        help="on SIGTERM, how long running runs get to finish before they are cancelled "
        "(default: 25s, under Kubernetes' 30s termination grace)",
    )


def run_engine(args: argparse.Namespace) -> int:
    from dagengine.engine import serve_engine

    configure_process_logging(args)
    port = args.port if args.port is not None else env_value("PORT", port_number)
    capacity = args.capacity if args.capacity is not None else env_value("CAPACITY", positive_int)
    engine_id = args.engine_id or os.environ.get("ENGINE_ID", "").strip() or None
    tls = {
        key: getattr(args, key) or os.environ.get(env, "").strip() or None
        for key, env in _TLS_ENV.items()
    }
    if (tls["tls_cert"] is None) != (tls["tls_key"] is None):
        raise BadInput("--tls-cert and --tls-key go together")
    if tls["tls_client_ca"] is not None and tls["tls_cert"] is None:
        raise BadInput("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    imports = [name.strip() for item in args.imports for name in item.split(",") if name.strip()]
    orchestrator = args.orchestrator or env_value("ORCHESTRATOR_ADDRESS", address)
    advertise = args.advertise_address or env_value("ADVERTISE_ADDRESS", address)
    self_register = args.self_register or bool(env_value("DAGENGINE_SELF_REGISTER", boolean))
    if self_register and orchestrator is None:
        raise BadInput("--self-register needs --orchestrator HOST:PORT (or ORCHESTRATOR_ADDRESS)")
    orchestrator_tls = _orchestrator_tls(args)
    return serve_engine(
        engine_id,
        args.host,
        50051 if port is None else port,
        10 if capacity is None else capacity,
        imports,
        tls_cert=read_file(tls["tls_cert"], "--tls-cert"),
        tls_key=read_file(tls["tls_key"], "--tls-key"),
        tls_client_ca=read_file(tls["tls_client_ca"], "--tls-client-ca"),
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        drain_grace=args.drain_grace,
        orchestrator_address=orchestrator,
        self_register=self_register,
        advertise=advertise,
        orchestrator_tls=orchestrator_tls,
    )


def _orchestrator_tls(args: argparse.Namespace) -> Any:
    """The ``--orchestrator-tls-*`` flags as a ``TLSConfig``; ``None`` without them (the
    engine then reads ``DAGENGINE_ORCHESTRATOR_TLS_*``)."""
    from dagengine.engine import TLSConfig

    ca, cert, key = args.orchestrator_tls_ca, args.orchestrator_tls_cert, args.orchestrator_tls_key
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise BadInput("--orchestrator-tls-cert and --orchestrator-tls-key go together")
    name = os.environ.get("DAGENGINE_ORCHESTRATOR_TLS_SERVER_NAME", "").strip() or None
    return TLSConfig(
        read_file(ca, "--orchestrator-tls-ca"),
        read_file(cert, "--orchestrator-tls-cert"),
        read_file(key, "--orchestrator-tls-key"),
        server_name=name,
    )
