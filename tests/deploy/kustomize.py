"""A small kustomize renderer covering exactly the features deploy/ uses, and no more.

Used when no real kustomize is on the machine (``kubectl kustomize``/``kustomize build``);
where one is, tests/deploy/test_kustomize.py checks that both render deploy/ identically, so
this stays honest. Any kustomization field or patch form it does not implement raises
:class:`Unsupported` rather than being ignored.

Implemented, in kustomize's order within one kustomization: ``resources`` (files, multi-document,
and directories holding a kustomization), ``components`` (``kind: Component``), then
``patches`` (strategic merge, from ``path`` or inline ``patch``, targeted by the patch's own
kind and name), ``namespace``, ``labels`` (``pairs``, ``includeSelectors``, ``includeTemplates``),
``replicas``, ``images`` (``newName``, ``newTag``, ``digest``).

Strategic merge follows the Kubernetes rules for the fields deploy/ patches: maps merge
recursively, ``null`` deletes a key, lists of containers/env/volumes/volumeMounts/ports merge
by their merge key (patch elements first, then the rest, as kustomize's kyaml does), any other
list is replaced. The directive ``$patch: delete`` removes the patch's target: a whole resource
(at the top of the patch) or one element of a merge-keyed list.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "components",
        "patches",
        "namespace",
        "labels",
        "replicas",
        "images",
    }
)

# Kinds deploy/ uses that are cluster-scoped (the namespace transformer leaves them alone).
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"})
# Kinds with a pod template at spec.template.
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
# Strategic-merge keys of the associative lists deploy/ may patch (from the Kubernetes API).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "tolerations": None,  # replaced, as in the API (no merge key)
}


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def load_documents(path: Path) -> list[Resource]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc:
            raise ValueError(f"{path}: not a Kubernetes object: {doc!r:.80}")
    return docs


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no kustomization in {directory}")


def build(directory: Path | str) -> list[Resource]:
    """The resources that ``kustomize build DIRECTORY`` prints (not in its order)."""
    return _build(Path(directory).resolve(), expect_kind="Kustomization", resources=[])


def _build(directory: Path, expect_kind: str, resources: list[Resource]) -> list[Resource]:
    path = find_kustomization(directory)
    spec = yaml.safe_load(path.read_text()) or {}
    kind = spec.get("kind", "Kustomization")
    if kind != expect_kind:
        raise ValueError(f"{path}: expected kind {expect_kind}, found {kind}")
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise Unsupported(f"{path}: fields not implemented here: {sorted(unknown)}")

    # A Kustomization starts empty; a Component works on what its parent accumulated.
    result = resources if expect_kind == "Component" else []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            result.extend(_build(target, "Kustomization", []))
        else:
            result.extend(load_documents(target))
    for entry in spec.get("components", []):
        result = _build((directory / entry).resolve(), "Component", result)
    _check_unique(result, path)

    for patch in spec.get("patches", []):
        apply_patch(result, _patch_body(patch, directory, path))
    if "namespace" in spec:
        set_namespace(result, spec["namespace"])
    for label in spec.get("labels", []):
        add_labels(result, label, path)
    for replica in spec.get("replicas", []):
        set_replicas(result, replica["name"], int(replica["count"]))
    for image in spec.get("images", []):
        set_image(result, image)
    return result


def key(resource: Resource) -> tuple[str, str, str]:
    meta = resource.get("metadata", {})
    return resource["kind"], meta.get("namespace", ""), meta["name"]


def _check_unique(resources: list[Resource], path: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        if key(resource) in seen:
            raise ValueError(f"{path}: {key(resource)} defined twice")
        seen.add(key(resource))


def _patch_body(patch: dict[str, Any], directory: Path, path: Path) -> Resource:
    if set(patch) - {"path", "patch"}:
        raise Unsupported(f"{path}: patch fields not implemented here: {sorted(patch)}")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    if not isinstance(body, dict) or "kind" not in body or "metadata" not in body:
        raise Unsupported(
            f"{path}: only strategic-merge patches (a partial object) are implemented"
        )
    return body


def apply_patch(resources: list[Resource], patch: Resource) -> None:
    targets = [
        r
        for r in resources
        if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
    ]
    if len(targets) != 1:
        raise ValueError(f"patch for {patch['kind']}/{patch['metadata']['name']}: no single target")
    directive = patch.get("$patch")
    if directive == "delete":
        resources.remove(targets[0])
        return
    if directive is not None:
        raise Unsupported(f"$patch: {directive} (only delete is implemented)")
    merged = strategic_merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def strategic_merge(original: Any, patch: Any, field: str | None = None) -> Any:
    """The strategic merge of ``patch`` into ``original`` (neither is modified)."""
    if isinstance(original, dict) and isinstance(patch, dict):
        result = copy.deepcopy(original)
        for name, value in patch.items():
            if value is None:
                result.pop(name, None)
            elif name in result:
                result[name] = strategic_merge(result[name], value, name)
            else:
                result[name] = copy.deepcopy(value)
        return result
    if isinstance(original, list) and isinstance(patch, list) and MERGE_KEYS.get(field or ""):
        merge_key = MERGE_KEYS[field or ""]
        if not all(isinstance(i, dict) and merge_key in i for i in original + patch):
            raise Unsupported(f"strategic merge of {field}: items without {merge_key!r}")
        by_key = {item[merge_key]: item for item in original}
        deleted = {item[merge_key] for item in patch if _delete_directive(item, field)}
        merged = [
            strategic_merge(by_key[item[merge_key]], item)
            if item[merge_key] in by_key
            else copy.deepcopy(item)
            for item in patch
            if item[merge_key] not in deleted
        ]
        patched = {item[merge_key] for item in patch}
        merged.extend(copy.deepcopy(i) for i in original if i[merge_key] not in patched)
        return merged
    return copy.deepcopy(patch)


def _delete_directive(item: dict[str, Any], field: str | None) -> bool:
    directive = item.get("$patch")
    if directive is None:
        return False
    if directive != "delete":
        raise Unsupported(f"$patch: {directive} in {field} (only delete is implemented)")
    return True


def set_namespace(resources: list[Resource], namespace: str) -> None:
    accounts = {r["metadata"]["name"] for r in resources if r["kind"] == "ServiceAccount"}
    for resource in resources:
        if resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = namespace
        # As kustomize's default (setRoleBindingSubjects: defaultOnly): a ServiceAccount subject
        # without a namespace, or in "default", that names one of these resources moves along.
        for subject in resource.get("subjects", []):
            if (
                subject.get("kind") == "ServiceAccount"
                and subject.get("namespace") in (None, "default")
                and subject.get("name") in accounts
            ):
                subject["namespace"] = namespace


def add_labels(resources: list[Resource], label: dict[str, Any], path: Path) -> None:
    if set(label) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise Unsupported(f"{path}: labels fields not implemented here: {sorted(label)}")
    if label.get("includeSelectors"):
        raise Unsupported(f"{path}: labels with includeSelectors (use plain metadata labels)")
    pairs = label["pairs"]
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(pairs)
        if label.get("includeTemplates") and resource["kind"] in WORKLOADS:
            template = resource["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def set_replicas(resources: list[Resource], name: str, count: int) -> None:
    targets = [r for r in resources if r["kind"] in WORKLOADS and r["metadata"]["name"] == name]
    if not targets:
        raise ValueError(f"replicas: no workload named {name}")
    for resource in targets:
        resource["spec"]["replicas"] = count


def image_name(image: str) -> str:
    """``registry/name:tag@digest`` without its tag and digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def set_image(resources: list[Resource], rule: dict[str, Any]) -> None:
    if set(rule) - {"name", "newName", "newTag", "digest"}:
        raise Unsupported(f"images fields not implemented here: {sorted(rule)}")
    for resource in resources:
        if resource["kind"] not in WORKLOADS:
            continue
        pod = resource["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            image = container.get("image", "")
            if image_name(image) != rule["name"]:
                continue
            name = rule.get("newName", rule["name"])
            rest = image[len(image_name(image)) :]
            if "digest" in rule:
                rest = "@" + rule["digest"]
            elif "newTag" in rule:
                rest = ":" + str(rule["newTag"])
            container["image"] = name + rest
