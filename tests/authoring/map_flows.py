"""Mapped (fanned-out) decorated workflows for tests/authoring/test_map.py: module-level, so
specs name them by import path and engine processes can import them."""

from __future__ import annotations

from typing import Any

import dagengine as de


@de.task(retries=2, timeout="10s")
def extract(day: str) -> dict[str, Any]:
    return {"rows": [1, 2, 3], "day": day}


@de.task
def square(x: int) -> dict[str, Any]:
    return {"sq": x * x}


@de.task
def total(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"sum": sum(p["sq"] for p in parts)}


@de.workflow("numbers-map", version="1.0.0")
def numbers(day: str, factor: int = 1) -> Any:
    """The issue's example: one square per extracted row, at run time."""
    e = extract(day)
    parts = square.map(e["rows"])
    return total(parts)


@de.task
def scale(x: int, factor: int) -> dict[str, Any]:
    return {"sq": x * factor}


@de.workflow("scaled-map")
def scaled(items: list[int], factor: int = 2) -> Any:
    """A map over a workflow parameter, with a second argument from the inputs."""
    return total(scale.map(items, factor))


@de.task(allow_partial=True, max_parallel=2)
def picky(x: int) -> dict[str, Any]:
    if x == 2:
        raise ValueError("no twos")
    return {"sq": x}


@de.task
def survivors(parts: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {"kept": [p["sq"] for p in parts if p is not None]}


@de.workflow("partial-map")
def partial() -> Any:
    """A map over a constant list whose failed item becomes None."""
    return survivors(picky.map([1, 2, 3]))
