"""The ``kubernetes`` client is an extra (``dagengine[kubernetes]``): without it, Kubernetes
discovery is a clear error naming the extra, and nothing else needs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from dagengine.exceptions import ConfigError
from dagengine.orchestrator.discovery import KubernetesDiscovery

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTRA_HINT = "pip install 'dagengine[kubernetes]'"


def test_kubernetes_discovery_without_the_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry makes `import kubernetes` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(ConfigError) as caught:
        KubernetesDiscovery(api=object())  # type: ignore[arg-type]
    err = caught.value
    assert str(err) == f"Kubernetes discovery needs the kubernetes package: {EXTRA_HINT}"
    assert (err.variable, err.value) == ("DISCOVERY", "kubernetes")
    assert isinstance(err.__cause__, ImportError)
    with pytest.raises(ConfigError, match=r"dagengine\[kubernetes\]"):
        KubernetesDiscovery(in_cluster=False)


def test_serve_with_kubernetes_discovery_and_no_client_exits_with_the_hint(
    tmp_path: Path,
) -> None:
    # The CLI's own error path: a DagEngineError printed to stderr, exit code 2, no traceback.
    code = (
        "import sys; sys.modules['kubernetes'] = None\n"
        "from dagengine.cli import main\n"
        "sys.exit(main(['serve', '--port', '0', '--store', ':memory:']))\n"
    )
    env = {
        **os.environ,
        "DISCOVERY": "kubernetes",
        "GRPC_PORT": "0",
        "IN_CLUSTER_CONFIG": "false",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert EXTRA_HINT in done.stderr
    assert "Traceback" not in done.stderr


def test_the_kubernetes_extra_is_declared_and_not_a_runtime_dependency() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = [
        re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    ]
    assert "kubernetes" not in names
    assert project["optional-dependencies"]["kubernetes"] == ["kubernetes>=29"]


def test_the_image_installs_the_kubernetes_extra() -> None:
    # deploy/'s orchestrator uses Kubernetes discovery: the image must have the client.
    # Both install paths (from the registry's python image, and from a local wheelhouse)
    # install the wheel with ${EXTRAS}, whose default names the kubernetes extra.
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    defaults = re.findall(r"^ARG EXTRAS=(\S+)$", dockerfile, re.M)
    assert defaults, "deploy/Dockerfile declares no default for ARG EXTRAS"
    assert all("kubernetes" in value.split(",") for value in defaults)
    wheels = re.findall(r'"/wheels/[^"]*"', dockerfile)
    assert len(wheels) >= 2
    assert all("[${EXTRAS}]" in wheel for wheel in wheels), wheels
