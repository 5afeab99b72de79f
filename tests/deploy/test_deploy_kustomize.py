"""The small kustomize renderer (kustomize.py): its rules, and agreement with the real tool."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_support import BUILDS, Resource, build_with_real_tool, real_kustomize
from kustomize import Unsupported, build, image_name, key, strategic_merge


def _write(directory: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):  # documents
            text = yaml.safe_dump_all(content)
        else:
            text = yaml.safe_dump(content)
        path.write_text(text)
    return directory


def _deployment(name: str, image: str = "app:1") -> Resource:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "args": ["a", "b"],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "readinessProbe": {"grpc": {"port": 1}, "periodSeconds": 5},
                        },
                        {"name": "side", "image": "other:2"},
                    ]
                },
            },
        },
    }


def test_strategic_merge_rules() -> None:
    original = _deployment("d")
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "args": ["c"],
                            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                            "readinessProbe": {"grpc": None, "exec": {"command": ["x"]}},
                        }
                    ]
                }
            }
        }
    }
    merged = strategic_merge(original, patch)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main", "side"]
    main = containers[0]
    assert main["args"] == ["c"]  # plain lists are replaced
    # keyed lists merge by key: the patch's items first, then the others (as kyaml does)
    assert main["env"] == [
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
        {"name": "A", "value": "1"},
    ]
    assert main["readinessProbe"] == {
        "exec": {"command": ["x"]},
        "periodSeconds": 5,
    }  # null deletes
    assert main["image"] == "app:1"
    assert original["spec"]["template"]["spec"]["containers"][0]["args"] == ["a", "b"]  # untouched


def test_keyed_list_without_its_key_is_refused() -> None:
    with pytest.raises(Unsupported, match="volumes"):
        strategic_merge({"volumes": [{"name": "a"}]}, {"volumes": [{"emptyDir": {}}]}, None)


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("app", "app"),
        ("app:1.2", "app"),
        ("registry:5000/team/app:1.2", "registry:5000/team/app"),
        ("registry:5000/app", "registry:5000/app"),
        ("app@sha256:abc", "app"),
        ("app:1@sha256:abc", "app"),
    ],
)
def test_image_name(image: str, name: str) -> None:
    assert image_name(image) == name


def test_build_features(tmp_path: Path) -> None:
    _write(
        tmp_path / "base",
        {
            "kustomization.yaml": {
                "resources": ["app.yaml"],
                "labels": [{"pairs": {"team": "x"}, "includeTemplates": True}],
            },
            "app.yaml": [
                _deployment("web"),
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "rb"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "r",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "sa"},
                        {"kind": "ServiceAccount", "name": "elsewhere"},
                    ],
                },
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}},
            ],
        },
    )
    _write(
        tmp_path / "component",
        {
            "kustomization.yaml": {
                "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                "kind": "Component",
                "resources": ["extra.yaml"],
                "patches": [{"path": "patch.yaml"}],
            },
            "extra.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}],
            "patch.yaml": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web"},
                    "spec": {"template": {"metadata": {"annotations": {"a": "b"}}}},
                }
            ],
        },
    )
    overlay = _write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": {
                "namespace": "ns",
                "resources": ["../base"],
                "components": ["../component"],
                "images": [{"name": "app", "newName": "reg.example/app", "newTag": "2"}],
                "replicas": [{"name": "web", "count": 4}],
                "patches": [
                    {
                        "patch": yaml.safe_dump(
                            {
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "metadata": {"name": "web"},
                                "spec": {"minReadySeconds": 3},
                            }
                        )
                    }
                ],
            }
        },
    )
    resources = {key(r)[0]: r for r in build(overlay)}
    web = resources["Deployment"]
    assert web["metadata"] == {"name": "web", "namespace": "ns", "labels": {"team": "x"}}
    assert web["spec"]["replicas"] == 4
    assert web["spec"]["minReadySeconds"] == 3
    assert web["spec"]["selector"] == {"matchLabels": {"app": "web"}}  # not includeSelectors
    template = web["spec"]["template"]
    assert template["metadata"] == {
        "labels": {"app": "web", "team": "x"},
        "annotations": {"a": "b"},
    }
    assert [c["image"] for c in template["spec"]["containers"]] == ["reg.example/app:2", "other:2"]
    assert resources["Namespace"]["metadata"] == {"name": "ns"}  # cluster-scoped
    # Only subjects naming a ServiceAccount of the build move to its namespace.
    assert [s.get("namespace") for s in resources["RoleBinding"]["subjects"]] == ["ns", None]
    if real_kustomize() is not None:
        assert _canonical(build(overlay)) == _canonical(
            build_with_real_tool(real_kustomize() or [], overlay)
        )


def test_unimplemented_fields_are_refused(tmp_path: Path) -> None:
    directory = _write(
        tmp_path, {"kustomization.yaml": {"resources": [], "commonAnnotations": {"a": "b"}}}
    )
    with pytest.raises(Unsupported, match="commonAnnotations"):
        build(directory)


def _canonical(resources: list[Resource]) -> dict[tuple[str, str, str], Resource]:
    found = {key(r): r for r in resources}
    assert len(found) == len(resources), "duplicate resources"
    return found


@pytest.mark.parametrize("name", BUILDS)
def test_renderer_agrees_with_real_kustomize(name: str) -> None:
    command = real_kustomize()
    if command is None:
        pytest.skip("no kustomize or kubectl on this machine to compare with")
    ours = _canonical(build(BUILDS[name]))
    theirs = _canonical(build_with_real_tool(command, BUILDS[name]))
    assert sorted(ours) == sorted(theirs)
    for resource_key, resource in theirs.items():
        assert ours[resource_key] == resource, resource_key
