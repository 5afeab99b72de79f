"""Node log lines: what capturing a Python node's lines costs, and what sending them live
from an engine adds (``dagengine.node_logs``, issue 21).

1. In-process capture, per line: a node attempt's ``logging`` records into an engine's
   ``NodeLogStore`` buffer kept until the attempt ends (the baseline: no live sending), then
   the same with a live sink (the store's sender thread hands new lines over every 100 ms or
   256 lines, as on an engine). Both beside the bare ``logging`` call with no capture.
2. End to end, per line: a run whose one Python node logs N lines, through an orchestrator,
   on an engine process (lines sent live) and on the in-process engine (lines merged by
   ``LocalRun``), minus the same run logging nothing; and the lines stored (all of them).

    .venv/bin/python benches/bench_node_logs.py [--lines N] [--repeats R]

Never asserts a timing; prints the figures and ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import Table, fmt_ratio, fmt_us, measure, ratio  # noqa: E402
from bench_service import start_engine  # noqa: E402
from dagengine import NodeContext  # noqa: E402
from dagengine.node_logs import NodeLogStore, capture  # noqa: E402

_log = logging.getLogger("bench.node_logs")
_log.setLevel(logging.INFO)
_log.propagate = False
_log.addHandler(logging.NullHandler())


def chatty(ctx: NodeContext) -> dict[str, int]:
    """Log ``inputs.lines`` lines (the end-to-end node)."""
    n = int(ctx.inputs["lines"])
    for i in range(n):
        _log.info("line %d of the bench", i)
    return {"n": n}


class _CountingSink:
    """Stands for the core's CancelToken: counts what the sender hands over."""

    def __init__(self) -> None:
        self.lines = 0
        self.lock = threading.Lock()

    def send_logs(self, lines: list[tuple[str, str]]) -> bool:
        with self.lock:
            self.lines += len(lines)
        return True


def _capture_lines(n: int, live: bool) -> None:
    store = NodeLogStore()
    sink = _CountingSink() if live else None
    buffer = store.new_buffer("n", 1, sink)
    with capture(buffer):
        for i in range(n):
            _log.info("line %d of the bench", i)
    store.done(buffer, "r", "n", 1)
    left = len(store.take("r", "n", 1))
    sent = sink.lines if sink is not None else 0
    assert sent + left == n, (sent, left, n)


def _bare_lines(n: int) -> None:
    for i in range(n):
        _log.info("line %d of the bench", i)


def section_capture(n: int, repeats: int) -> None:
    bare = measure(lambda: _bare_lines(n), repeats, 1)
    kept = measure(lambda: _capture_lines(n, live=False), repeats, 1)
    live = measure(lambda: _capture_lines(n, live=True), repeats, 1)
    table = Table(
        f"1. capturing {n:,} logging lines in one node attempt (median of {repeats})",
        ["variant", "us/line", "vs kept to the end"],
    )
    table.add("logging, no capture", fmt_us(bare.per_item_us(n)), "—")
    table.add("captured, kept to the end (baseline)", fmt_us(kept.per_item_us(n)), "1.0x")
    table.add(
        "captured, sent live (engine)",
        fmt_us(live.per_item_us(n)),
        fmt_ratio(ratio(live.median, kept.median)),
    )
    table.notes.append("last column: time of the variant / time of the baseline (lower is cheaper)")
    table.print()


def _run(orch: Any, lines: int) -> tuple[float, int]:
    from dagengine.orchestrator import Monitor

    result = orch.execute_workflow("logs", {"lines": lines}, wait=True)
    assert result.ok, result.error
    orch.store.flush()
    stored = Monitor(orch.events).history(run_id=result.run_id, types="node.log", limit=lines + 10)
    return result.duration, len(stored)


def section_end_to_end(n: int, repeats: int) -> None:
    from dagengine.orchestrator import Engine, Orchestrator

    spec = {"nodes": [{"id": "chatty", "python": "bench_node_logs:chatty"}]}
    rows: list[tuple[str, float, float, int]] = []
    proc, address = start_engine("bench-logs", folder=HERE)
    try:
        for name in ("engine process (live)", "in-process engine"):
            orch = Orchestrator(store=":memory:", embedded_engine=False)
            try:
                if name.startswith("engine"):
                    orch.register_engine("bench-logs", address)
                else:
                    orch.register_engine("local", Engine())
                orch.register_workflow("logs", "1.0.0", spec)
                _run(orch, 10)  # warm-up
                quiet = sorted(_run(orch, 0)[0] for _ in range(repeats))[repeats // 2]
                runs = [_run(orch, n) for _ in range(repeats)]
                loud = sorted(d for d, _ in runs)[repeats // 2]
                stored = min(s for _, s in runs)
                rows.append((name, quiet, loud, stored))
            finally:
                orch.stop()
    finally:
        proc.kill()
        proc.wait()
    table = Table(
        f"2. a run whose Python node logs {n:,} lines, through an orchestrator "
        f"(median of {repeats})",
        ["engine", "run, 0 lines", f"run, {n:,} lines", "us/line", "lines stored", "vs in-process"],
    )
    base = rows[1]
    for name, quiet, loud, stored in rows:
        per_line = max(0.0, loud - quiet) / n * 1e6
        base_line = max(0.0, base[2] - base[1]) / n * 1e6
        table.add(
            name,
            f"{quiet * 1e3:.1f} ms",
            f"{loud * 1e3:.1f} ms",
            fmt_us(per_line),
            f"{stored:,}",
            fmt_ratio(ratio(per_line, base_line)) if name != base[0] else "1.0x",
        )
    table.notes.append("run durations are the engine's; us/line = (N lines - 0 lines) / N")
    table.notes.append("last column: us/line of the row / us/line in-process (lower is cheaper)")
    table.print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # (20,000 lines of ~20 bytes stay under the 1 MiB a node attempt may log)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}\n")
    section_capture(args.lines, args.repeats)
    section_end_to_end(args.lines, args.repeats)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
