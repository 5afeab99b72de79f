"""Section 3: Lua nodes, dagengine's sandboxed executor vs ``lupa`` called from Python.

The work of one node: sum the 10-element ``inputs.values`` and return ``{sum = s}``.

* **dagengine**: a DAG of such nodes (chain, and fan-out ``1 -> N``) run with
  ``dag.run({"values": [...]})``: µs/node for the whole run, which includes converting the
  inputs (and the parents' results) into Lua and every returned table back out, scheduling,
  and building the :class:`dagengine.RunResult`.
* **lupa**: the same function body compiled once in a ``lupa.lua54.LuaRuntime``; each call
  converts a Python dict to a Lua table (``table_from(..., recursive=True)``), calls the
  function, and converts the returned table back to a dict: the "full call (dict in, table
  out)", N calls back to back on one thread, no scheduling at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench_common import Config, Shape, Table, chain, fan, fmt_ratio, fmt_us, measure, ratio
from bench_dags import build_dag, run_dag, time_phases
from dagengine import LuaExecutor

LUA_BODY = "local s=0 for _,v in ipairs(inputs.values) do s=s+v end return {sum=s}"
VALUES = list(range(1, 11))
EXPECTED_SUM = sum(VALUES)


def lua_shapes(cfg: Config) -> list[Shape]:
    """Chain and fan-out with ``cfg.nodes`` Lua nodes (plus the fan's source)."""
    return [chain(cfg.nodes), fan(cfg.nodes, fan_in=False)]


def make_lupa_call() -> Callable[[dict[str, Any]], dict[Any, Any]]:
    """A Python callable doing one full lupa call: dict in, Lua function, dict out."""
    import lupa.lua54 as lua54  # the same Lua version as dagengine's vendored Lua

    lua = lua54.LuaRuntime()
    fn = lua.eval(f"function(inputs) {LUA_BODY} end")
    table_from = lua.table_from

    def call(inputs: dict[str, Any]) -> dict[Any, Any]:
        return dict(fn(table_from(inputs, recursive=True)).items())

    return call


def time_lupa(calls: int, cfg: Config) -> float:
    """Median µs per full lupa call over ``calls`` back-to-back calls."""
    call = make_lupa_call()
    inputs = {"values": VALUES}
    if call(inputs) != {"sum": EXPECTED_SUM}:
        raise RuntimeError("lupa baseline computed the wrong sum")

    def batch() -> None:
        for _ in range(calls):
            call(inputs)

    return measure(batch, cfg.baseline_repeats, cfg.warmup).per_item_us(calls)


def check_outputs(shape: Shape, cfg: Config) -> None:
    """Run the DAG once and make sure every node computed the sum (the timing is void if not)."""
    dag = build_dag(shape, lambda: LuaExecutor(LUA_BODY))
    result = dag.run({"values": VALUES}).raise_for_status()
    if any(out.get("sum") != EXPECTED_SUM for out in result.outputs.values()):
        raise RuntimeError(f"dagengine Lua nodes computed a wrong sum on {shape.name}")


@dataclass
class LuaResult:
    """Per-node figures (µs) of one shape; ``vs_lupa`` is lupa / dagengine."""

    shape: str
    nodes: int
    dagengine_us: float
    core_us: float | None
    convert_us: float | None
    build_us: float
    lupa_us: float
    vs_lupa: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def measure_lua_shape(shape: Shape, lupa_us: float, cfg: Config) -> LuaResult:
    """dagengine on one shape, against the (shape-independent) lupa figure."""
    check_outputs(shape, cfg)
    executor = LuaExecutor(LUA_BODY)
    build = measure(lambda: build_dag(shape, lambda: executor), min(cfg.repeats, 3), 0)
    dag = build_dag(shape, lambda: executor)
    inputs = {"values": VALUES}
    run = measure(lambda: run_dag(dag, inputs), cfg.repeats, cfg.warmup)
    core, convert = time_phases(dag, inputs, cfg.repeats)
    ours = run.per_item_us(shape.n)
    return LuaResult(
        shape=shape.name,
        nodes=shape.n,
        dagengine_us=ours,
        core_us=core.per_item_us(shape.n) if core else None,
        convert_us=convert.per_item_us(shape.n) if convert else None,
        build_us=build.per_item_us(shape.n),
        lupa_us=lupa_us,
        vs_lupa=ratio(lupa_us, ours),
    )


def section_lua(cfg: Config) -> list[LuaResult]:
    """Section 3: measure, print the table, return the figures."""
    lupa_us = time_lupa(cfg.nodes, cfg)
    results = [measure_lua_shape(shape, lupa_us, cfg) for shape in lua_shapes(cfg)]
    table = Table(
        "3. Lua nodes: sum a 10-element table, return a table (µs/node)",
        [
            "shape",
            "dagengine",
            "core",
            "RunResult",
            "lupa full call",
            "vs lupa",
            "build+preprocess",
        ],
    )
    for r in results:
        table.add(
            r.shape,
            fmt_us(r.dagengine_us),
            fmt_us(r.core_us),
            fmt_us(r.convert_us),
            fmt_us(r.lupa_us),
            fmt_ratio(r.vs_lupa),
            fmt_us(r.build_us),
        )
    table.notes.append(
        "dagengine = dag.run({'values': [1..10]}) per node (conversions, scheduling, "
        "RunResult included); core | RunResult = further runs split where the core finishes"
    )
    table.notes.append(
        f"lupa = {cfg.nodes:,} back-to-back calls: table_from(dict, recursive=True) → "
        "compiled function → dict(result.items()); Lua 5.4, one thread"
    )
    table.print()
    return results
