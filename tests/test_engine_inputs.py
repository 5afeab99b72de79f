"""The engine process checks a run's inputs against its workflow's ``inputs:`` schema itself,
for callers that skip the Python clients' check (a raw gRPC call)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from dagengine.engine import workflow_to_proto
from dagengine.v1 import engine_pb2 as pb
from dagengine.v1 import engine_pb2_grpc as pb_grpc
from processes import EngineProcess

SPEC: dict[str, Any] = {
    "id": "typed",
    "inputs": {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1},
            "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
        },
        "required": ["n"],
        "additionalProperties": False,
    },
    "nodes": [{"id": "echo", "lua": "return {n = inputs.n, mode = inputs.mode}"}],
}


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.EngineServiceStub]:
    engine = EngineProcess("--engine-id", "inputs-engine", "--capacity", "2")
    try:
        with grpc.insecure_channel(engine.address) as channel:
            yield pb_grpc.EngineServiceStub(channel)
    finally:
        engine.kill()


def _request(inputs: Any) -> pb.RunRequest:
    return pb.RunRequest(
        run_id="r-" + json.dumps(inputs, sort_keys=True),
        attempt=1,
        workflow=workflow_to_proto(SPEC),
        inputs_json=json.dumps(inputs).encode(),
    )


def test_the_schema_travels_with_the_workflow() -> None:
    assert json.loads(workflow_to_proto(SPEC).inputs_schema_json) == SPEC["inputs"]


def test_good_inputs_run_with_defaults_filled_in(stub: pb_grpc.EngineServiceStub) -> None:
    result = stub.RunToEnd(_request({"n": 2}), timeout=30)
    assert result.status == pb.SUCCEEDED
    [echo] = [n for n in result.nodes if n.node_id == "echo"]
    assert json.loads(echo.output_json) == {"n": 2, "mode": "fast"}


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({}, ["inputs.n: required, missing"]),
        ({"n": 0}, ["inputs.n: expected at least 1, got 0"]),
        ({"n": "two"}, ['inputs.n: expected integer, got "two"']),
        (
            {"n": 1, "mode": "medium", "extra": 1},
            [
                'inputs.mode: expected one of "fast", "slow", got "medium"',
                "inputs.extra: unknown input (expected one of: n, mode)",
            ],
        ),
    ],
)
def test_bad_inputs_are_refused_naming_each_path(
    stub: pb_grpc.EngineServiceStub, inputs: dict[str, Any], expected: list[str]
) -> None:
    for call in (stub.RunToEnd, lambda req, timeout: list(stub.Run(req, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as info:
            call(_request(inputs), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for text in expected:
            assert text in (info.value.details() or "")
