"""Config.from_env: the original system's variables with their names and defaults, ours, and a
ConfigError naming the variable and value for every bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dagengine.exceptions import ConfigError, DagEngineError
from dagengine.orchestrator.config import (
    ANNOTATION_CAPACITY,
    ANNOTATION_PORT,
    DEFAULT_ENGINE_CAPACITY,
    Config,
)


def test_defaults_are_the_original_systems() -> None:
    cfg = Config.from_env({})
    assert cfg.k8s_namespace == "default"
    assert cfg.k8s_service_name == "workflow-engines"
    assert cfg.k8s_label_selector == "app=workflow-engine"
    assert cfg.in_cluster_config is True
    assert cfg.transport_type == "grpc"
    assert cfg.load_balancer_type == "consistent-hash"
    assert cfg.grpc_port == 50051
    assert cfg.engine_discovery_interval == 30.0
    assert cfg.engine_health_check_interval == 10.0
    assert cfg.discovery == "none"
    assert cfg.engines == ()
    assert cfg.store_path == os.path.expanduser("~/.local/state/dagengine/dagengine.db")
    assert cfg.queue_limit == 10000
    assert cfg.max_subworkflow_depth == 16
    assert cfg.http_port == 8080
    assert (cfg.tls_ca, cfg.tls_cert, cfg.tls_key) == (None, None, None)
    assert not cfg.tls_enabled
    assert cfg == Config()  # the dataclass defaults are the same defaults


def test_annotation_constants() -> None:
    assert ANNOTATION_PORT == "workflow-engine/port"
    assert ANNOTATION_CAPACITY == "workflow-engine/capacity"
    assert DEFAULT_ENGINE_CAPACITY == 10


def test_overrides(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    cfg = Config.from_env(
        {
            "K8S_NAMESPACE": "prod",
            "K8S_SERVICE_NAME": "engines",
            "K8S_LABEL_SELECTOR": "app=dag,tier=engine",
            "IN_CLUSTER_CONFIG": "false",
            "TRANSPORT_TYPE": "GRPC",
            "LOAD_BALANCER_TYPE": "Least-Loaded",
            "GRPC_PORT": "6000",
            "ENGINE_DISCOVERY_INTERVAL": "2.5",
            "ENGINE_HEALTH_CHECK_INTERVAL": "0.5",
            "DISCOVERY": "kubernetes",
            "DAGENGINE_STORE": ":memory:",
            "DAGENGINE_QUEUE_LIMIT": "0",
            "DAGENGINE_MAX_SUBWORKFLOW_DEPTH": "3",
            "DAGENGINE_HTTP_PORT": "0",
            "DAGENGINE_TLS_CA": str(tmp_path / "ca.pem"),
            "DAGENGINE_TLS_CERT": str(tmp_path / "cert.pem"),
            "DAGENGINE_TLS_KEY": str(tmp_path / "key.pem"),
        }
    )
    assert cfg.k8s_namespace == "prod"
    assert cfg.k8s_service_name == "engines"
    assert cfg.k8s_label_selector == "app=dag,tier=engine"
    assert cfg.in_cluster_config is False
    assert cfg.transport_type == "grpc"
    assert cfg.load_balancer_type == "least-loaded"
    assert cfg.grpc_port == 6000
    assert cfg.engine_discovery_interval == 2.5
    assert cfg.engine_health_check_interval == 0.5
    assert cfg.discovery == "kubernetes"
    assert cfg.store_path == ":memory:"
    assert cfg.queue_limit == 0
    assert cfg.max_subworkflow_depth == 3
    assert cfg.http_port == 0
    assert cfg.tls_ca == str(tmp_path / "ca.pem")
    assert cfg.tls_key == str(tmp_path / "key.pem")
    assert cfg.tls_enabled


def test_engines_imply_static_discovery() -> None:
    cfg = Config.from_env({"ENGINES": " a:1 , [::1]:50051,b.example.com:65535, "})
    assert cfg.discovery == "static"
    assert cfg.engines == ("a:1", "[::1]:50051", "b.example.com:65535")
    assert Config.from_env({"ENGINES": "a:1", "DISCOVERY": "self-registration"}).discovery == (
        "self-registration"
    )


def test_store_path_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Config.from_env({"DAGENGINE_STORE": "~/x.db"}).store_path == str(tmp_path / "x.db")


def test_empty_values_mean_default() -> None:
    cfg = Config.from_env({"GRPC_PORT": "", "K8S_NAMESPACE": "  ", "DISCOVERY": ""})
    assert cfg.grpc_port == 50051
    assert cfg.k8s_namespace == "default"
    assert cfg.discovery == "none"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_PORT", "7001")
    assert Config.from_env().grpc_port == 7001


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IN_CLUSTER_CONFIG", "maybe"),
        ("TRANSPORT_TYPE", "http"),
        ("LOAD_BALANCER_TYPE", "random"),
        ("GRPC_PORT", "fifty"),
        ("GRPC_PORT", "65536"),
        ("GRPC_PORT", "-1"),
        ("GRPC_PORT", "1.5"),
        ("ENGINE_DISCOVERY_INTERVAL", "soon"),
        ("ENGINE_DISCOVERY_INTERVAL", "0"),
        ("ENGINE_DISCOVERY_INTERVAL", "-3"),
        ("ENGINE_HEALTH_CHECK_INTERVAL", "nan"),
        ("ENGINE_HEALTH_CHECK_INTERVAL", "inf"),
        ("DISCOVERY", "consul"),
        ("ENGINES", "just-a-host"),
        ("ENGINES", "host:"),
        ("ENGINES", ":50051"),
        ("ENGINES", "host:0"),
        ("ENGINES", "host:99999"),
        ("ENGINES", "host:port"),
        ("ENGINES", "::1:50051"),
        ("ENGINES", "a:1,a:1"),
        ("DAGENGINE_QUEUE_LIMIT", "-1"),
        ("DAGENGINE_QUEUE_LIMIT", "many"),
        ("DAGENGINE_MAX_SUBWORKFLOW_DEPTH", "0"),
        ("DAGENGINE_HTTP_PORT", "70000"),
        ("DAGENGINE_TLS_CA", "/no/such/ca.pem"),
    ],
)
def test_bad_values_name_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({variable: value})
    err = info.value
    assert isinstance(err, DagEngineError)
    assert isinstance(err, ValueError)
    assert err.variable == variable
    assert err.value == value
    assert variable in str(err)
    assert repr(value) in str(err)


def test_static_discovery_needs_engines() -> None:
    with pytest.raises(ConfigError, match="ENGINES") as info:
        Config.from_env({"DISCOVERY": "static"})
    assert info.value.variable == "ENGINES"


@pytest.mark.parametrize(("given", "missing"), [("CERT", "KEY"), ("KEY", "CERT")])
def test_client_certificate_needs_its_key(tmp_path: Path, given: str, missing: str) -> None:
    (tmp_path / "f.pem").write_text("x")
    with pytest.raises(ConfigError, match=f"DAGENGINE_TLS_{missing}") as info:
        Config.from_env({f"DAGENGINE_TLS_{given}": str(tmp_path / "f.pem")})
    assert info.value.variable == f"DAGENGINE_TLS_{missing}"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.grpc_port = 1  # type: ignore[misc]


def test_tls_server_name_for_engines_dialled_by_ip() -> None:
    config = Config.from_env({"DAGENGINE_TLS_SERVER_NAME": "workflow-engines"})
    assert config.tls_server_name == "workflow-engines"
    assert Config.from_env({}).tls_server_name is None
