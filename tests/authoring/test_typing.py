"""``@dagengine.task`` keeps the function's signature for type checkers (ParamSpec): mypy,
run on a small module, accepts right calls and reports wrong ones, inside a workflow too."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SOURCE = textwrap.dedent(
    """
    from typing import Any
    import dagengine as de

    @de.task(retries=2)
    def square(x: int) -> dict[str, int]:
        return {"sq": x * x}

    @de.task
    def total(parts: list[dict[str, int]], factor: int = 1) -> dict[str, int]:
        return {"sum": sum(p["sq"] for p in parts) * factor}

    reveal_type(square)
    reveal_type(square(3))
    square("three")
    square(3, 4)
    total([square(1)], factor="x")

    @de.workflow("typed", version="1.0.0")
    def typed(n: int) -> Any:
        first = square(n)
        return total([first, square(first["sq"])], factor=2)

    reveal_type(typed)
    typed.run({"n": 2})
    """
)


def test_mypy_sees_the_task_signatures(tmp_path: Path) -> None:
    module = tmp_path / "typed_flows.py"
    module.write_text(SOURCE)
    stdout, stderr, _ = mypy_api.run(
        [
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--follow-imports=silent",
            str(module),
        ]
    )
    lines = [line.split(": ", 1)[1] for line in stdout.splitlines() if ": " in line]
    assert not stderr
    assert lines == [
        'note: Revealed type is "dagengine.authoring.Task[[x: int], dict[str, int]]"',
        'note: Revealed type is "dict[str, int]"',
        'error: Argument 1 to "__call__" of "Task" has incompatible type "str"; '
        'expected "int"  [arg-type]',
        'error: Too many arguments for "__call__" of "Task"  [call-arg]',
        'error: Argument "factor" to "__call__" of "Task" has incompatible type "str"; '
        'expected "int"  [arg-type]',
        'note: Revealed type is "dagengine.authoring.DecoratedWorkflow"',
    ]
