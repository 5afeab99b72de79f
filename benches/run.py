"""dagengine benchmark suite: ``python benches/run.py [--quick] [--only SECTION ...]``.

Runs each section side by side against its baselines, prints one table per section and a
summary of the targets from the design issue (met / not met, from the figures just measured),
and writes every figure to ``benches/results.json``. Timings are reported, never asserted.
See ``benches/README.md`` for what each section measures and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

# Sibling modules; also makes `python benches/run.py` work from any directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagengine
from bench_authoring import AuthoringResult, section_authoring
from bench_common import Config, Table, available_cores, fmt_ratio, fmt_seconds, fmt_us
from bench_dags import ShapeResult, section_noop, section_python
from bench_lua import LuaResult, section_lua
from bench_memory import GROWTH_TOLERANCE_KIB, MemoryResult, section_memory
from bench_rules import RulesResult, section_rules
from bench_topo import TopoResult, section_topo

SECTIONS: dict[str, Callable[[Config], list[Any]]] = {
    "noop": section_noop,
    "python": section_python,
    "lua": section_lua,
    "topo": section_topo,
    "memory": section_memory,
    "authoring": section_authoring,
    "rules": section_rules,
}
ALIASES = {str(i): name for i, name in enumerate(SECTIONS, start=1)}
TARGET_TOPO_NODES = 1_000_000
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions and a 100,000-node graph in the topological-order section",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SECTION",
        help=f"run only this section ({', '.join(SECTIONS)} or 1-{len(SECTIONS)}); repeatable",
    )
    parser.add_argument("--nodes", type=int, help="nodes of the run shapes (default 10,000)")
    parser.add_argument("--topo-nodes", type=int, help="nodes of the topological-order graph")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="where to write the figures"
    )
    parser.add_argument("--no-json", action="store_true", help="do not write the figures")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    """The configuration for these arguments."""
    cfg = Config()
    if args.quick:
        cfg = replace(cfg, quick=True, repeats=3, baseline_repeats=3, topo_nodes=100_000)
    if args.nodes:
        cfg = replace(cfg, nodes=args.nodes)
    if args.topo_nodes:
        cfg = replace(cfg, topo_nodes=args.topo_nodes)
    return cfg


def selected_sections(only: list[str] | None) -> list[str]:
    """Section names to run, in suite order."""
    if not only:
        return list(SECTIONS)
    wanted = set()
    for item in only:
        for name in item.split(","):
            key = ALIASES.get(name.strip(), name.strip())
            if key not in SECTIONS:
                raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
            wanted.add(key)
    return [name for name in SECTIONS if name in wanted]


# --- header -----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo``, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine may be shared)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def package_version(name: str) -> str:
    """Installed version of ``name``, or ``missing``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def core_build_time() -> str:
    """Modification time of the native module (which build of the core was measured)."""
    from dagengine import _core

    path = Path(_core.__file__ or "")
    if not path.is_file():
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(path.stat().st_mtime))


def machine_info(cfg: Config) -> dict[str, Any]:
    """What the header prints (also stored in the JSON)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": available_cores(),
        "load_average_start": load_average(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "dagengine": dagengine.__version__,
        "dagengine_path": str(Path(dagengine.__file__).parent),
        "dagengine_core_built": core_build_time(),
        "baselines": {n: package_version(n) for n in ("dask", "networkx", "rustworkx", "lupa")},
        "config": asdict(cfg),
    }


def print_header(info: dict[str, Any], sections: list[str]) -> None:
    """The machine and configuration, before any figure."""
    cfg = info["config"]
    baselines = ", ".join(f"{k} {v}" for k, v in info["baselines"].items())
    lines = [
        f"dagengine benchmarks — {info['date']}",
        f"machine:   {info['platform']}, {info['cpu']}",
        f"cores:     {info['cores']} ({info['cores_available']} available to this process); "
        f"load average at start {info['load_average_start']}",
        f"python:    {info['python']} ({info['python_executable']})",
        f"dagengine: {info['dagengine']} ({info['dagengine_path']}, "
        f"_core built {info['dagengine_core_built']})",
        f"baselines: {baselines}",
        f"mode:      {'quick' if cfg['quick'] else 'full'}; sections {', '.join(sections)}; "
        f"run shapes {cfg['nodes']:,} nodes; topological order {cfg['topo_nodes']:,} nodes; "
        f"repeats {cfg['repeats']} (baselines {cfg['baseline_repeats']}), "
        f"warm-up {cfg['warmup']}",
    ]
    print("\n".join(lines), end="\n\n", flush=True)


# --- targets ----------------------------------------------------------------------------------


@dataclass
class Check:
    """One target of the issue, against what was measured."""

    target: str
    measured: str
    met: bool | None  # None: not measurable in this run

    @property
    def verdict(self) -> str:
        """``met`` / ``NOT MET`` / ``n/a``."""
        if self.met is None:
            return "n/a"
        return "met" if self.met else "NOT MET"


def at_most(value: float | None, limit: float) -> bool | None:
    """``value <= limit``, ``None`` if not measured."""
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    """``value >= limit``, ``None`` if not measured."""
    return None if value is None else value >= limit


def noop_checks(results: list[ShapeResult]) -> list[Check]:
    """≤ 1 µs/node on every shape and ≥ 15x graphlib + threads."""
    checks = []
    for r in results:
        checks.append(
            Check(
                f"no-op, {r.shape}: ≤ 1 µs/node",
                f"{fmt_us(r.dagengine_us)} µs",
                at_most(r.dagengine_us, 1.0),
            )
        )
        checks.append(
            Check(
                f"no-op, {r.shape}: ≥ 15x graphlib+threads",
                fmt_ratio(r.vs_graphlib),
                at_least(r.vs_graphlib, 15.0),
            )
        )
    return checks


def python_checks(results: list[ShapeResult]) -> list[Check]:
    """≤ 1 µs/node and ≥ 10x graphlib + threads on every shape (issue 20)."""
    checks = []
    for r in results:
        checks.append(
            Check(
                f"Python, {r.shape}: ≤ 1 µs/node",
                f"{fmt_us(r.dagengine_us)} µs",
                at_most(r.dagengine_us, 1.0),
            )
        )
        checks.append(
            Check(
                f"Python, {r.shape}: ≥ 10x graphlib+threads",
                fmt_ratio(r.vs_graphlib),
                at_least(r.vs_graphlib, 10.0),
            )
        )
    return checks


def lua_checks(results: list[LuaResult]) -> list[Check]:
    """≤ 3 µs/node including conversions and ≥ 2x lupa, on every Lua shape."""
    checks = []
    for r in results:
        checks.append(
            Check(
                f"Lua, {r.shape}: ≤ 3 µs/node",
                f"{fmt_us(r.dagengine_us)} µs",
                at_most(r.dagengine_us, 3.0),
            )
        )
        checks.append(
            Check(
                f"Lua, {r.shape}: ≥ 2x lupa full call",
                fmt_ratio(r.vs_lupa),
                at_least(r.vs_lupa, 2.0),
            )
        )
    return checks


def topo_checks(results: list[TopoResult]) -> list[Check]:
    """≤ 1 s and ≥ 3x rustworkx at 1M nodes, ≤ 150 B/node of peak memory."""
    ours = next((r for r in results if r.contender == "dagengine"), None)
    rx = next((r for r in results if r.contender == "rustworkx"), None)
    if ours is None or ours.seconds is None:
        return [Check("1M-node build+validate+order", "failed", False)]
    full = ours.nodes == TARGET_TOPO_NODES
    size = "" if full else f" (at {ours.nodes:,} nodes)"
    vs_rx = rx.vs_dagengine if rx is not None else None
    return [
        Check(
            "1M nodes: build+validate+order ≤ 1 s",
            fmt_seconds(ours.seconds) + size,
            at_most(ours.seconds, 1.0) if full else None,
        ),
        Check("1M nodes: ≥ 3x rustworkx", fmt_ratio(vs_rx) + size, at_least(vs_rx, 3.0)),
        Check(
            "1M nodes: ≤ 150 B/node peak memory",
            f"{ours.bytes_per_node:,.0f} B{size}",
            at_most(ours.bytes_per_node, 150.0),
        ),
    ]


def memory_checks(results: list[MemoryResult]) -> list[Check]:
    """No growth across the repeated runs."""
    return [
        Check(
            f"no memory growth, {r.dag}, {r.runs:,} runs",
            f"{r.growth_kib:+,} KiB (less-grown half of run 100→{r.runs:,})",
            not r.grew,
        )
        for r in results
    ]


def authoring_checks(results: list[AuthoringResult]) -> list[Check]:
    """A decorated 10,000-task workflow is defined in <= 50 ms (median)."""
    wall = next(r for r in results if r.what == "define")
    cpu = next(r for r in results if r.what == "define, CPU")
    full = wall.nodes == 10_000
    size = "" if full else f" (at {wall.nodes:,} tasks)"
    return [
        Check(
            "decorated 10,000-task workflow defined ≤ 50 ms",
            f"{wall.decorated:.1f} ms (min {wall.decorated_min:.1f}, "
            f"CPU {cpu.decorated:.1f}){size}",
            at_most(wall.decorated, 50.0) if full else None,
        )
    ]


def rules_checks(results: list[RulesResult]) -> list[Check]:
    """A Lua ``when`` costs <= 1 µs per node (over the same nodes without one)."""
    return [
        Check(
            f"when, {r.shape}: ≤ 1 µs/node ({r.variant})",
            f"{r.extra_us:+.3f} µs",
            at_most(r.extra_us, 1.0),
        )
        for r in results
        if r.extra_us is not None and "when=" in r.variant and r.variant.startswith("no-op")
    ]


CHECKS: dict[str, Callable[[list[Any]], list[Check]]] = {
    "noop": noop_checks,
    "python": python_checks,
    "lua": lua_checks,
    "topo": topo_checks,
    "memory": memory_checks,
    "authoring": authoring_checks,
    "rules": rules_checks,
}


def print_summary(checks: list[Check]) -> None:
    """The targets table."""
    table = Table(
        "Targets (from the issue), measured in this run", ["target", "measured", "verdict"]
    )
    for check in checks:
        table.add(check.target, check.measured, check.verdict)
    met = sum(c.met is True for c in checks)
    table.notes.append(f"{met} of {len(checks)} met; n/a = not measurable at this size")
    table.notes.append(f"memory growth tolerance: {GROWTH_TOLERANCE_KIB} KiB in each half")
    table.print()


# --- main -------------------------------------------------------------------------------------


def to_json(results: list[Any]) -> list[dict[str, Any]]:
    """The figures of one section, JSON-ready."""
    return [r.to_json() for r in results]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections, print tables and the summary, write the JSON."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = make_config(args)
    sections = selected_sections(args.only)
    info = machine_info(cfg)
    print_header(info, sections)
    figures: dict[str, list[dict[str, Any]]] = {}
    checks: list[Check] = []
    for name in sections:
        results = SECTIONS[name](cfg)
        figures[name] = to_json(results)
        checks.extend(CHECKS[name](results))
    print_summary(checks)
    info["load_average_end"] = load_average()
    print(f"load average at end: {info['load_average_end']}")
    if not args.no_json:
        payload = {"machine": info, "sections": figures, "targets": [asdict(c) for c in checks]}
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
