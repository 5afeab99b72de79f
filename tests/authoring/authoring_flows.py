"""Decorated tasks and workflows for tests/authoring: module-level, so specs name them by
import path and engine processes (with this directory on their path) can import them."""

from __future__ import annotations

from typing import Any

import dagengine as de

CALLS: list[str] = []


@de.task(retries=2, timeout="10s")
def extract(day: str) -> dict[str, Any]:
    return {"rows": [1, 2, 3], "day": day}


@de.task
def square(x: int) -> dict[str, Any]:
    return {"sq": x * x}


@de.task
def total(parts: list[dict[str, Any]], factor: int = 1) -> dict[str, Any]:
    return {"sum": sum(p["sq"] for p in parts) * factor}


@de.workflow("numbers", version="1.0.0")
def numbers(day: str, factor: int = 1) -> Any:
    """Squares of the extracted rows, summed."""
    e = extract(day)
    parts = [square(e["rows"][i]) for i in range(3)]
    return total(parts, factor=factor)


@de.task
def count(rows: list[int]) -> dict[str, Any]:
    return {"n": len(rows)}


@de.workflow("missing-key")
def missing_key(day: str) -> Any:
    e = extract(day)
    return count(e["rowz"])


@de.task(retries=3)
def flaky(attempts_to_fail: int) -> dict[str, Any]:
    CALLS.append("flaky")
    if len(CALLS) <= attempts_to_fail:
        raise RuntimeError(f"flaky failure {len(CALLS)}")
    return {"ok": True}


@de.task
def save(total: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("the real save must not run in tests")


@de.workflow("pipeline", version="2.0.0")
def pipeline(day: str) -> Any:
    e = extract(day)
    t = total([square(e["rows"][0]), square(e["rows"][2])])
    return save(t)
