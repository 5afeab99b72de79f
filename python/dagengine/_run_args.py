"""Checks of a local run's arguments (:meth:`DAG.start <dagengine.DAG.start>`): its
inputs as JSON data, and the outputs of nodes a resumed run has already completed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagengine._jsondata import check_json_data
from dagengine.exceptions import SpecError, ValidationError
from dagengine.nodes import Node

__all__ = ["check_completed", "check_inputs"]


def check_inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's inputs as a dict, or :class:`ValidationError` naming what in them is not
    JSON data (see :mod:`dagengine._jsondata`): a lone surrogate, an integer past 64 bits,
    NaN, a non-str key, nesting past the limit, another type."""
    if type(inputs) is dict:  # the usual case, without the Mapping ABC's isinstance
        check_json_data(inputs, "inputs")
        return inputs
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise ValidationError(f"inputs: expected a mapping, got {type(inputs).__name__}")
    data = dict(inputs)
    check_json_data(data, "inputs")
    return data


def check_completed(
    completed: Mapping[str, Mapping[str, Any]], nodes: Mapping[str, Node]
) -> dict[str, Mapping[str, Any]]:
    if not isinstance(completed, Mapping):
        raise TypeError(f"completed must be a mapping, got {type(completed).__name__}")
    for node_id, output in completed.items():
        node = nodes.get(node_id)
        if node is None:
            # An item of a mapped node (`square[3]`): its expansion does not run it again.
            name, _, index = node_id.removesuffix("]").rpartition("[")
            mapped = nodes.get(name)
            if (
                mapped is None
                or mapped.map is None
                or not node_id.endswith("]")
                or not index.isdigit()
                or str(int(index)) != index
            ):
                raise SpecError(
                    f"completed names {node_id!r}, which is not a node of this DAG",
                    path="completed",
                )
        elif node.map is not None and isinstance(output, list):
            continue  # a mapped node's output is the list of its items'
        if not isinstance(output, Mapping):
            raise TypeError(
                f"completed[{node_id!r}] must be the node's output dict, "
                f"got {type(output).__name__}"
            )
    return dict(completed)
