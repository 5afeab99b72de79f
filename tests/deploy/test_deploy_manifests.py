"""deploy/'s Kubernetes manifests: valid against a pinned Kubernetes version's schemas (strict),
and consistent with what the processes actually do (ports, probes, drain, discovery)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    BUILDS,
    CUSTOM_SCHEMAS,
    DEPLOY,
    K8S_VERSION,
    REPLICA_BUILDS,
    Resource,
    by_kind,
    one,
    render,
)
from kustomize import KUSTOMIZATION_FILES, load_documents

ENGINE = "workflow-engine"
ORCHESTRATOR = "dagengine-orchestrator"
# The original system's orchestrator variables, with their defaults (its README).
ORIGINAL_ORCHESTRATOR_ENV = {
    "K8S_SERVICE_NAME": "workflow-engines",
    "K8S_LABEL_SELECTOR": "app=workflow-engine",
    "IN_CLUSTER_CONFIG": "true",
    "TRANSPORT_TYPE": "grpc",
    "LOAD_BALANCER_TYPE": "consistent-hash",
    "GRPC_PORT": "50051",
    "ENGINE_DISCOVERY_INTERVAL": "30",
    "ENGINE_HEALTH_CHECK_INTERVAL": "10",
}


def _patch_files() -> set[Path]:
    """Files named as patches by a kustomization (partial objects: validated once applied)."""
    found: set[Path] = set()
    for directory in {p.parent for p in DEPLOY.rglob("*") if p.name in KUSTOMIZATION_FILES}:
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
        found.update(
            (directory / p["path"]).resolve() for p in spec.get("patches", []) if "path" in p
        )
    return found


def _manifest_files() -> list[Path]:
    patches = _patch_files()
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if p.name not in KUSTOMIZATION_FILES and p.resolve() not in patches
    )


def _validate(resource: Resource, where: str) -> None:
    name = f"{where}: {resource['kind']}/{resource.get('metadata', {}).get('name')}"
    schema_file = CUSTOM_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if schema_file is not None:
        try:
            jsonschema.validate(resource, json.loads(schema_file.read_text()))
        except jsonschema.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{name} does not match {schema_file.name} at {path}: {exc.message}")
        return
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{name} is not valid Kubernetes {K8S_VERSION} at {path}: {exc.message}")


def test_pinned_version_is_shipped() -> None:
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


def test_strict_validation_rejects_unknown_fields() -> None:
    """The check itself: a misspelt field must fail, or the validation proves nothing."""
    bad = load_documents(DEPLOY / "base" / "engine-pdb.yaml")[0]
    bad["spec"]["maxUnavailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="maxUnavailabel"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_strict_custom_schema_rejects_unknown_fields() -> None:
    bad = load_documents(DEPLOY / "overlays" / "example-postgres" / "database.yaml")[0]
    schema = json.loads(CUSTOM_SCHEMAS[("postgresql.cnpg.io/v1", "Cluster")].read_text())
    jsonschema.validate(bad, schema)
    bad["spec"]["storage"]["sise"] = "1Gi"
    with pytest.raises(jsonschema.ValidationError, match="sise"):
        jsonschema.validate(bad, schema)


def test_manifest_files_are_found() -> None:
    names = {p.name for p in _manifest_files()}
    assert {
        "engine-deployment.yaml",
        "orchestrator-rbac.yaml",
        "engine-hpa.yaml",
        "orchestrator-pdb.yaml",
        "database.yaml",
    } <= names


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_file_is_valid(path: Path) -> None:
    for resource in load_documents(path):
        _validate(resource, str(path.relative_to(DEPLOY)))


@pytest.mark.parametrize("name", BUILDS)
def test_kustomize_output_is_valid(name: str, builds: dict[str, list[Resource]]) -> None:
    assert builds[name], f"{name} rendered nothing"
    for resource in builds[name]:
        _validate(resource, f"kustomize build {name}")


# --- consistency of the rendered manifests ------------------------------------------------------


def _container(deployment: Resource) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _port_number(port: int | str, container: dict[str, Any]) -> int:
    return _ports(container)[port] if isinstance(port, str) else port


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def _configmap_value(resources: list[Resource], env: dict[str, Any]) -> str:
    ref = env["valueFrom"]["configMapKeyRef"]
    return one(resources, "ConfigMap", ref["name"])["data"][ref["key"]]


def _drain_grace(container: dict[str, Any]) -> float:
    for arg in container["args"]:
        match = re.fullmatch(r"--drain-grace=(\d+(?:\.\d+)?)s?", arg)
        if match:
            return float(match.group(1))
    return 25.0  # the engine's default


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(params=list(BUILDS))
def rendered(request: pytest.FixtureRequest, builds: dict[str, list[Resource]]) -> list[Resource]:
    return builds[request.param]


def test_engine_id_is_the_pod_name(rendered: list[Resource]) -> None:
    env = _env(_container(one(rendered, "Deployment", ENGINE)))
    assert env["ENGINE_ID"] == {
        "name": "ENGINE_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


def test_engine_port_agrees_everywhere(rendered: list[Resource]) -> None:
    deployment = one(rendered, "Deployment", ENGINE)
    container = _container(deployment)
    port = _ports(container)["grpc"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["workflow-engine/port"] == str(port)
    assert _configmap_value(rendered, _env(container)["PORT"]) == str(port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "grpc" in container[probe]:
            assert container[probe]["grpc"]["port"] == port, probe
    service = one(rendered, "Service", "workflow-engines")
    assert service["spec"]["clusterIP"] == "None"
    assert [
        (p["port"], _port_number(p["targetPort"], container)) for p in service["spec"]["ports"]
    ] == [(port, port)]


def test_engine_capacity_annotation_matches_configmap(rendered: list[Resource]) -> None:
    deployment = one(rendered, "Deployment", ENGINE)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    capacity = _configmap_value(rendered, _env(_container(deployment))["CAPACITY"])
    assert annotations["workflow-engine/capacity"] == capacity


def test_engine_probes_use_grpc_health(builds: dict[str, list[Resource]]) -> None:
    # Plaintext builds use the kubelet's native gRPC probes; the TLS one execs the image's
    # health check (the kubelet's gRPC probe has no TLS), asking the same services.
    for name in ("base", "example"):
        container = _container(one(builds[name], "Deployment", ENGINE))
        assert container["livenessProbe"]["grpc"]["service"] == ""
        assert container["startupProbe"]["grpc"]["service"] == ""
        assert container["readinessProbe"]["grpc"]["service"] == "dagengine.v1.EngineService"
    container = _container(one(builds["example-tls"], "Deployment", ENGINE))
    assert "grpc" not in container["livenessProbe"]
    assert container["livenessProbe"]["exec"]["command"] == ["dagengine-healthcheck", "engine"]
    assert container["readinessProbe"]["exec"]["command"][-2:] == [
        "--service",
        "dagengine.v1.EngineService",
    ]


def test_termination_grace_covers_prestop_and_drain(rendered: list[Resource]) -> None:
    pod = one(rendered, "Deployment", ENGINE)["spec"]["template"]["spec"]
    container = _container(one(rendered, "Deployment", ENGINE))
    assert container["args"][0] == "engine"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    drain = _drain_grace(container)
    assert any(a.startswith("--drain-grace=") for a in container["args"]), "pass it explicitly"
    assert 0 < pre_stop <= 15
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_pods_are_locked_down(rendered: list[Resource]) -> None:
    for deployment in by_kind(rendered, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"requests", "limits"} <= set(container["resources"])
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
            # The root filesystem is read-only: /tmp is a volume.
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_engines_spread_and_have_a_disruption_budget(rendered: list[Resource]) -> None:
    deployment = one(rendered, "Deployment", ENGINE)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} >= {"kubernetes.io/hostname"}
    assert all(_matches(c["labelSelector"]["matchLabels"], labels) for c in constraints)
    pdb = one(rendered, "PodDisruptionBudget", ENGINE)
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


def test_discovery_selector_finds_engines_only(rendered: list[Resource]) -> None:
    config = one(rendered, "ConfigMap", "dagengine-orchestrator-config")["data"]
    selector = dict(pair.split("=", 1) for pair in config["K8S_LABEL_SELECTOR"].split(","))
    pods = {
        name: d["spec"]["template"]["metadata"]["labels"]
        for name, d in by_kind(rendered, "Deployment").items()
    }
    assert [name for name, labels in pods.items() if _matches(selector, labels)] == [ENGINE]
    assert config["K8S_SERVICE_NAME"] in by_kind(rendered, "Service")


def test_services_select_their_pods(rendered: list[Resource]) -> None:
    pods = {
        name: (d["spec"]["template"]["metadata"]["labels"], _container(d))
        for name, d in by_kind(rendered, "Deployment").items()
    }
    for service in by_kind(rendered, "Service").values():
        targets = [
            (name, container)
            for name, (labels, container) in pods.items()
            if _matches(service["spec"]["selector"], labels)
        ]
        assert len(targets) == 1, service["metadata"]["name"]
        _, container = targets[0]
        for port in service["spec"]["ports"]:
            assert _port_number(port["targetPort"], container) in _ports(container).values()


@pytest.mark.parametrize("name", sorted(set(BUILDS) - REPLICA_BUILDS))
def test_orchestrator_is_a_singleton_on_its_volume(
    name: str, builds: dict[str, list[Resource]]
) -> None:
    rendered = builds[name]
    deployment = one(rendered, "Deployment", ORCHESTRATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(deployment)
    # On the pod's IP (the default, 127.0.0.1, is unreachable for probes, the Service and the
    # engines that call OrchestratorService).
    assert container["args"] == ["serve", "--host", "0.0.0.0"]
    config = one(rendered, "ConfigMap", "dagengine-orchestrator-config")["data"]
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [
        "dagengine-orchestrator-config"
    ]
    store_dir = str(Path(config["DAGENGINE_STORE"]).parent)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[store_dir]]["persistentVolumeClaim"]["claimName"]
    assert one(rendered, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    _check_orchestrator_ports_and_probes(rendered, container)


def _check_orchestrator_ports_and_probes(
    rendered: list[Resource], container: dict[str, Any]
) -> None:
    config = one(rendered, "ConfigMap", "dagengine-orchestrator-config")["data"]
    ports = _ports(container)
    assert ports == {"http": int(config["DAGENGINE_HTTP_PORT"]), "grpc": int(config["GRPC_PORT"])}
    paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in paths.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert _port_number(http["port"], container) == ports["http"]


@pytest.mark.parametrize("name", sorted(REPLICA_BUILDS))
def test_orchestrator_replicas_share_a_database(
    name: str, builds: dict[str, list[Resource]]
) -> None:
    rendered = builds[name]
    deployment = one(rendered, "Deployment", ORCHESTRATOR)
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    # Old and new pods run side by side during an update; never fewer than the count serve.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    labels = spec["template"]["metadata"]["labels"]
    pdb = one(rendered, "PodDisruptionBudget", ORCHESTRATOR)
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    # Spread over nodes (and zones): one node's loss takes at most one replica where possible.
    terms = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    by_topology = {t["podAffinityTerm"]["topologyKey"]: t for t in terms}
    assert set(by_topology) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for term in terms:
        assert _matches(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    assert by_topology["kubernetes.io/hostname"]["weight"] == 100
    # The database URL (it holds a password) comes from a Secret, never from the ConfigMap.
    container = _container(deployment)
    env = _env(container)
    config = one(rendered, "ConfigMap", "dagengine-orchestrator-config")["data"]
    assert "DAGENGINE_STORE" not in config
    secret = env["DAGENGINE_STORE"]["valueFrom"]["secretKeyRef"]
    assert env["DAGENGINE_REPLICA"]["value"] == "1"
    # No SQLite volume left behind.
    assert not by_kind(rendered, "PersistentVolumeClaim")
    volumes = spec["template"]["spec"]["volumes"]
    assert all("persistentVolumeClaim" not in v for v in volumes)
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["args"] == ["serve", "--host", "0.0.0.0"]
    _check_orchestrator_ports_and_probes(rendered, container)
    # CloudNativePG writes the Secret `<cluster>-app` with the application user's `uri`.
    [cluster] = [r for r in rendered if r["kind"] == "Cluster"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert secret == {"name": cluster["metadata"]["name"] + "-app", "key": "uri"}
    assert cluster["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert cluster["spec"]["instances"] >= 3
    assert cluster["spec"]["bootstrap"]["initdb"]["database"] == "dagengine"


def test_replicas_component_reads_a_generic_secret(tmp_path: Path) -> None:
    """Without the CloudNativePG overlay, the component names the Secret users create."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                # Relative: kustomize refuses an absolute root.
                "resources": [os.path.relpath(DEPLOY / "base", tmp_path)],
                "components": [os.path.relpath(DEPLOY / "components" / "replicas", tmp_path)],
            }
        )
    )
    rendered = render(tmp_path)
    for resource in rendered:
        _validate(resource, "base + components/replicas")
    env = _env(_container(one(rendered, "Deployment", ORCHESTRATOR)))
    assert env["DAGENGINE_STORE"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagengine-database",
        "key": "uri",
    }


def test_orchestrator_configuration(rendered: list[Resource]) -> None:
    config = one(rendered, "ConfigMap", "dagengine-orchestrator-config")["data"]
    for name, default in ORIGINAL_ORCHESTRATOR_ENV.items():
        assert config[name] == default, name
    assert config["DISCOVERY"] == "kubernetes"
    assert ("DAGENGINE_STORE" in config) == (
        one(rendered, "Deployment", ORCHESTRATOR)["spec"]["replicas"] == 1
    )
    env = _env(_container(one(rendered, "Deployment", ORCHESTRATOR)))
    # Its own namespace, whatever the overlay picks.
    assert env["K8S_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_orchestrator_identity_is_bound(rendered: list[Resource]) -> None:
    pod = one(rendered, "Deployment", ORCHESTRATOR)["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    one(rendered, "ServiceAccount", account)
    assert not by_kind(rendered, "ClusterRole")
    assert not by_kind(rendered, "ClusterRoleBinding")
    [binding] = by_kind(rendered, "RoleBinding").values()
    assert binding["roleRef"]["kind"] == "Role"
    one(rendered, "Role", binding["roleRef"]["name"])
    # The subject is the orchestrator's account in the RoleBinding's own namespace.
    [subject] = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account)
    assert subject.get("namespace") == binding["metadata"].get("namespace")
    engine_pod = one(rendered, "Deployment", ENGINE)["spec"]["template"]["spec"]
    assert engine_pod["automountServiceAccountToken"] is False


def test_base_is_namespace_agnostic(builds: dict[str, list[Resource]]) -> None:
    assert all("namespace" not in r["metadata"] for r in builds["base"])


def test_example_overlay(builds: dict[str, list[Resource]]) -> None:
    resources = builds["example"]
    namespace = one(resources, "Namespace", "dagengine")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(
        r["metadata"].get("namespace") == "dagengine" for r in resources if r["kind"] != "Namespace"
    )
    engines = one(resources, "Deployment", ENGINE)
    assert engines["spec"]["replicas"] == 3
    for deployment in by_kind(resources, "Deployment").values():
        assert _container(deployment)["image"] == "registry.example.com/dagengine:0.1.0"
    hpa = one(resources, "HorizontalPodAutoscaler", ENGINE)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": ENGINE,
    }
    assert hpa["spec"]["minReplicas"] <= engines["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    # The patch example: bigger engines taking 20 runs at once.
    assert _container(engines)["resources"]["limits"]["memory"] == "2Gi"
    assert one(resources, "ConfigMap", "workflow-engine-config")["data"]["CAPACITY"] == "20"
    # The base has no HPA: it is an optional component.
    assert not by_kind(builds["base"], "HorizontalPodAutoscaler")


def test_tls_overlay_mounts_one_secret_on_both_sides(builds: dict[str, list[Resource]]) -> None:
    resources = builds["example-tls"]
    for name in (ENGINE, ORCHESTRATOR):
        deployment = one(resources, "Deployment", name)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "dagengine-tls"
        container = _container(deployment)
        mount = {m["name"]: m for m in container["volumeMounts"]}["tls"]
        assert mount["readOnly"] is True
        files = {
            e["name"]: e["value"]
            for e in container["env"]
            if e["name"].startswith("DAGENGINE_TLS_")
        }
        assert files, name
        for path in files.values():
            if path.startswith("/"):
                assert path.startswith(mount["mountPath"] + "/"), path
    engine_env = _env(_container(one(resources, "Deployment", ENGINE)))
    assert {"DAGENGINE_TLS_CERT", "DAGENGINE_TLS_KEY", "DAGENGINE_TLS_CLIENT_CA"} <= set(engine_env)
    orchestrator_env = _env(_container(one(resources, "Deployment", ORCHESTRATOR)))
    assert {"DAGENGINE_TLS_CA", "DAGENGINE_TLS_CERT", "DAGENGINE_TLS_KEY"} <= set(orchestrator_env)
