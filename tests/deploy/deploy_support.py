"""Shared helpers of the deployment checks: deploy/'s manifests, raw and as kustomize renders them.

Rendering uses a real kustomize when the machine has one (``kustomize build`` or
``kubectl kustomize``, as on the project's machines), else the small renderer in
``kustomize.py`` (test_deploy_kustomize.py shows both agree where both exist).
No network: kustomize reads only local files here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kustomize
import yaml

DEPLOY_TESTS = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_TESTS.parent.parent
DEPLOY = REPO_ROOT / "deploy"

# The Kubernetes version whose JSON schemas (shipped by kubernetes-validate) every manifest is
# validated against, strictly (unknown fields fail).
K8S_VERSION = "1.35.0"

# kustomization directories that must build, and be valid.
BUILDS = {
    "base": DEPLOY / "base",
    "example": DEPLOY / "overlays" / "example",
    "example-tls": DEPLOY / "overlays" / "example-tls",
    "example-postgres": DEPLOY / "overlays" / "example-postgres",
}
# The builds whose orchestrators are active replicas on PostgreSQL (components/replicas); the
# others run one orchestrator on its SQLite volume.
REPLICA_BUILDS = frozenset({"example-postgres"})

# Custom resources deploy/ uses, by (apiVersion, kind): the JSON schema (a strict subset of the
# operator's CRD) they are validated against, as kubernetes-validate has only built-in kinds.
CUSTOM_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): DEPLOY_TESTS / "schemas" / "cnpg-cluster-v1.json",
}

Resource = dict[str, Any]


def real_kustomize() -> list[str] | None:
    """The command line of a real kustomize build, if one is installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def build_with_real_tool(command: list[str], directory: Path) -> list[Resource]:
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)} {directory}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def render(directory: Path) -> list[Resource]:
    command = real_kustomize()
    if command is not None:
        return build_with_real_tool(command, directory)
    return kustomize.build(directory)


def by_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    found = by_kind(resources, kind)
    assert name in found, f"no {kind}/{name} in {sorted(found)}"
    return found[name]
