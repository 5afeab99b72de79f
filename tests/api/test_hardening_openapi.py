"""The OpenAPI document's workflow spec and the spec parser agree (issue 17, point 8): every
key the parser reads is described, and a key is nullable in the document exactly when the
parser reads ``null`` as not given. (schemathesis found ``{"spec": {..., "timeout": null}}``
registered though the document said no; the keys added since, ``map``, ``cache``, ``when``,
``trigger_rule``, the workflow's ``inputs``, were refused by the document.)"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from dagengine.api.openapi import openapi_document
from dagengine.exceptions import SpecError
from dagengine.spec_model import _NODE_KEYS, _TOP_KEYS, parse

DOC = openapi_document()
SCHEMAS = DOC["components"]["schemas"]

NODE = {"id": "a", "lua": "return {}"}
SPEC = {"id": "w", "version": "1.0.0", "nodes": [NODE]}


def schema_accepts(spec: dict[str, Any]) -> bool:
    schema = {"$ref": "#/components/schemas/WorkflowSpec", "components": DOC["components"]}
    try:
        jsonschema.validate(spec, schema)
    except jsonschema.ValidationError:
        return False
    return True


def parser_accepts(spec: dict[str, Any]) -> bool:
    try:
        parse(spec)
    except (SpecError, TypeError):
        return False
    return True


def test_the_document_describes_every_key_the_parser_reads() -> None:
    assert set(SCHEMAS["WorkflowSpec"]["properties"]) == set(_TOP_KEYS)
    assert set(SCHEMAS["NodeSpec"]["properties"]) == set(_NODE_KEYS)


def _with_null(key: str, *, node: bool) -> dict[str, Any]:
    if node:
        executor = {"noop": True} if key == "lua" else {}
        return {**SPEC, "nodes": [{**NODE, **executor, key: None}]}
    return {**SPEC, key: None}


# (A spec without a version parses, but registering one needs it: the door refuses null.)
@pytest.mark.parametrize("key", sorted(set(_TOP_KEYS) - {"id", "nodes", "version"}))
def test_a_null_spec_key_is_in_the_document_as_the_parser_reads_it(key: str) -> None:
    spec = _with_null(key, node=False)
    assert schema_accepts(spec) == parser_accepts(spec), (key, parser_accepts(spec))


@pytest.mark.parametrize("key", sorted(set(_NODE_KEYS) - {"id", "lua"}))
def test_a_null_node_key_is_in_the_document_as_the_parser_reads_it(key: str) -> None:
    spec = _with_null(key, node=True)
    assert schema_accepts(spec) == parser_accepts(spec), (key, parser_accepts(spec))


@pytest.mark.parametrize(
    "node",
    [
        {"id": "b", "deps": ["a"], "lua": "return {}", "map": "results.a.items", "max_items": 9},
        {"id": "b", "deps": ["a"], "lua": "return {}", "when": "results.a.ok"},
        {"id": "b", "deps": ["a"], "noop": True, "trigger_rule": "all_done"},
        {"id": "b", "lua": "return {}", "cache": {"key": "inputs.day", "ttl": "1h"}},
        {"id": "b", "lua": "return {}", "cache": True},
    ],
)
def test_the_newer_node_keys_are_accepted_by_both(node: dict[str, Any]) -> None:
    spec = {**SPEC, "nodes": [NODE, node]}
    assert parser_accepts(spec)
    assert schema_accepts(spec)


@pytest.mark.parametrize(
    "node",
    [
        {"id": "b", "lua": "return {}", "when": "  "},
        {"id": "b", "lua": "return {}", "trigger_rule": "sometimes"},
        {"id": "b", "lua": "return {}", "cache": {"ttl": 0}},
        {"id": "b", "lua": "return {}", "cache": {"other": 1}},
        {"id": "b", "deps": ["a"], "lua": "return {}", "map": "results.a", "max_items": 0},
        {"id": "b", "lua": "return {}", "allow_partial": None},
    ],
)
def test_what_the_document_refuses_the_parser_refuses(node: dict[str, Any]) -> None:
    spec = {**SPEC, "nodes": [NODE, node]}
    assert not schema_accepts(spec)
    assert not parser_accepts(spec)
