"""The orchestrator's Role grants exactly what Kubernetes discovery calls
(``dagengine.orchestrator.discovery.RBAC_RULES``), nothing more."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import pytest
from deploy_support import BUILDS, Resource, by_kind, one

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    found: set[Grant] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    found.add((group, resource, verb))
    return found


def _discovery_rules() -> list[dict[str, Any]]:
    try:
        discovery = importlib.import_module("dagengine.orchestrator.discovery")
    except ModuleNotFoundError as exc:
        if exc.name in ("dagengine.orchestrator", "dagengine.orchestrator.discovery"):
            pytest.skip(
                "dagengine.orchestrator.discovery does not exist yet: RBAC_RULES (what "
                "discovery calls) cannot be compared with deploy/base/orchestrator-rbac.yaml"
            )
        raise
    return list(discovery.RBAC_RULES)


def test_grants_expands_rules() -> None:
    rules = [{"apiGroups": ["", "discovery.k8s.io"], "resources": ["pods"], "verbs": ["list"]}]
    assert grants(rules) == {("", "pods", "list"), ("discovery.k8s.io", "pods", "list")}


@pytest.mark.parametrize("name", BUILDS)
def test_role_grants_exactly_what_discovery_calls(
    name: str, builds: dict[str, list[Resource]]
) -> None:
    expected = grants(_discovery_rules())
    assert expected, "RBAC_RULES is empty"
    [binding] = by_kind(builds[name], "RoleBinding").values()
    role = one(builds[name], "Role", binding["roleRef"]["name"])
    assert grants(role["rules"]) == expected
    assert not any("resourceNames" in rule for rule in role["rules"])
