"""An OpenAPI-driven fuzz pass (schemathesis) over the app with all its checks: no input it
generates may get a 500, every response must match the document (status codes, content
types, headers, schemas), schema-valid requests must be accepted and schema-violating ones
refused — so the document and the server agree on what a request may hold.

Bounded: 60 examples per operation and generation mode (positive and negative), run
in-process over ASGI, well under a minute in all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from dagengine.api import create_app
from dagengine.orchestrator import Orchestrator
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from .conftest import LUA3, make_triggers

pytestmark = pytest.mark.integration

#: Examples per operation and generation mode.
MAX_EXAMPLES = 60

# Every check is enabled (schemathesis' default); two operations answer statuses the
# document cannot predict from a request's shape, and say so here:
# - registering a spec: whether its graph has a cycle, its deps name its nodes, its version
#   is semver and its Lua compiles is not expressible in JSON Schema, so a schema-valid spec
#   may rightly get a 400;
# - the "small" trigger has a 64-byte body limit (a size JSON Schema cannot state): a body
#   past it gets a 413 whether or not it is schema-valid.
CONFIG = {
    "operations": [
        {
            "include-operation-id": "registerWorkflow",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429", "5xx"],
                },
            },
        },
        {
            "include-operation-id": "trigger_small",
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ["2xx", "413"]},
                "negative_data_rejection": {"expected-statuses": ["400", "413"]},
            },
        },
    ]
}


@pytest.fixture(scope="module")
def fuzz_app() -> Iterator[Any]:
    orch = Orchestrator(store=":memory:")
    orch.register_workflow("lua3", "1.0.0", LUA3)
    triggers = make_triggers()
    app = create_app(orch, triggers=triggers, max_body_bytes=64 * 1024)
    for trigger in triggers:
        trigger.start(orch)
    yield app
    for trigger in triggers:
        trigger.stop()
    app.state.api.close()
    orch.stop()


def test_all_checks_pass_on_every_operation(fuzz_app: Any) -> None:
    # Operations are driven here rather than through schemathesis' pytest plugin, which does
    # not support this pytest version; call_and_validate runs every enabled check.
    config = SchemathesisConfig.from_dict(CONFIG)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=config)
    failures: list[str] = []
    operations = examples = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case: Any) -> None:
                nonlocal examples
                examples += 1
                case.call_and_validate()

            try:
                fuzz()
            except Unsatisfiable:
                # No request violates this operation's schema (no body, only free-form path
                # parameters): there is no negative case to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
            # Collect every operation's failures, then report (schemathesis raises them as a
            # FailureGroup, a BaseExceptionGroup).
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    elapsed = time.monotonic() - started
    print(f"schemathesis: {operations} operations, {examples} examples, {elapsed:.1f}s")
    assert operations >= 16
    assert examples >= operations * MAX_EXAMPLES // 2
    assert not failures, "\n\n".join(failures)
