"""Module-level node functions and executors that specs in the tests refer to by import path."""

from __future__ import annotations

from typing import Any

from dagengine import NodeContext


def const(ctx: NodeContext) -> dict[str, Any]:
    """Return the node id and the run input ``x``."""
    return {"node": ctx.node_id, "x": ctx.inputs.get("x")}


def double(ctx: NodeContext) -> dict[str, Any]:
    """Double the ``value`` of every parent."""
    return {"value": 2 * sum(r.get("value", 0) for r in ctx.results.values())}


def boom(ctx: NodeContext) -> None:
    """Always fail."""
    raise ValueError(f"boom in {ctx.node_id}")


async def async_value(ctx: NodeContext) -> dict[str, Any]:
    """An async node."""
    return {"value": 7}


class Adder:
    """A custom executor class: ``python: node_funcs:Adder``."""

    def execute(self, ctx: NodeContext) -> dict[str, Any]:
        """Sum the parents' values plus one."""
        return {"value": 1 + sum(r.get("value", 0) for r in ctx.results.values())}


class NoExecute:
    """A class without ``execute``: not usable as a node."""


NOT_CALLABLE = 42


class Namespace:
    """Nested qualname target: ``node_funcs:Namespace.inner``."""

    @staticmethod
    def inner(ctx: NodeContext) -> dict[str, Any]:
        """Return a marker."""
        return {"inner": True}
