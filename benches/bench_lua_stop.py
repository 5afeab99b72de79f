"""How fast the Lua sandbox stops scripts that run where no hook reaches or never return to the
VM (issue 17, point 3): an ``xpcall`` message handler, a ``__close`` handler, coroutines inside
them, backtracking pattern matches with every ``string`` pattern function, ``string.rep``, and
loops of long C steps (``upper``, ``lower``, ``table.concat``, ``table.sort``).

The issue's bounds: stopped within 2x the node's deadline, and within 100 ms of a cancel. The
tests (``tests/test_lua_sandbox.py``, ``rust/dagengine-lua/tests/unstoppable.rs``) only tell a
stop from a hang (2 s); this measures the figures, through ``dag.run`` / ``dag.start``:

* **deadline**: a one-node DAG with ``timeout=T`` (0.2 s): the time ``dag.run()`` takes, over T;
* **cancel**: ``dag.start()``, 50 ms after ``node_started`` ``handle.cancel()``; the time from
  the cancel to ``handle.wait()`` returning.

Each form is run ``--repeats`` times (default 5); the table shows the median and the worst.
Run: ``.venv/bin/python benches/bench_lua_stop.py [--repeats N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from dagengine import DAG, LuaExecutor, Node, RunStatus

DEADLINE = 0.2
CANCEL_AFTER = 0.05

LOOP = "while true do end"
LOOP_CLOSE = f"setmetatable({{}}, {{__close = function() {LOOP} end}})"
SUBJECT = "string.rep('a', 1e7)"
PATTERN = "'.-.-.-.-.-b'"
BIG = "local big = string.rep('a', 1e7)"

FORMS: list[tuple[str, str]] = [
    ("xpcall handler after error()", f"xpcall(function() error('x') end, function() {LOOP} end)"),
    ("xpcall handler after a limit", f"xpcall(function() {LOOP} end, function() {LOOP} end)"),
    (
        "coroutine in a handler",
        f"xpcall(error, function() coroutine.wrap(function() {LOOP} end)() end)",
    ),
    ("__close on block exit", f"do local x <close> = {LOOP_CLOSE} end"),
    ("__close after a limit", f"do local x <close> = {LOOP_CLOSE} {LOOP} end"),
    (
        "coroutine in a __close",
        "do local x <close> = setmetatable({}, {__close = function() "
        f"coroutine.resume(coroutine.create(function() {LOOP} end)) end}}) end",
    ),
    (
        "__close in a wrapped coroutine",
        f"coroutine.wrap(function() local x <close> = {LOOP_CLOSE} {LOOP} end)()",
    ),
    ("string.find", f"string.find({SUBJECT}, {PATTERN})"),
    ("string.match", f"string.match({SUBJECT}, {PATTERN})"),
    ("string.gmatch", f"for m in string.gmatch({SUBJECT}, {PATTERN}) do end"),
    ("string.gsub", f"string.gsub({SUBJECT}, {PATTERN}, 'x')"),
    ("string.gsub (function)", f"string.gsub({SUBJECT}, {PATTERN}, function() end)"),
    ("plain find", f"string.find({SUBJECT}, string.rep('a', 1e5) .. 'b', 1, true)"),
    ("string.rep of nothing, looped", "while true do local s = string.rep('', 1e18) end"),
    ("string.rep of 30 MB, looped", "while true do local s = ('a'):rep(3e7) end"),
    # A loop of long C steps: the hook ran every 1,000 instructions (seconds of such steps);
    # now the watchdog has it run at the next instruction once the deadline or a cancel is due.
    ("upper of 10 MB, looped", f"{BIG} while true do local s = big:upper() end"),
    (
        "lower of 10 MB, looped, coroutine",
        f"coroutine.wrap(function() {BIG} while true do local s = big:lower() end end)()",
    ),
    (
        "table.concat, looped",
        "local t = {} for i = 1, 2e5 do t[i] = 'abcdefghijklmnopqrstuvwxyz0123456789' end "
        "while true do local c = table.concat(t) end",
    ),
    (
        "table.sort, looped",
        "local t = {} for i = 1, 3e5 do t[i] = (i * 7919) % 300007 end "
        "while true do table.sort(t) end",
    ),
]


def stop_at_deadline(code: str) -> tuple[float, str]:
    dag = DAG("stop")
    dag.add_node(Node("s", [], LuaExecutor(code), timeout=DEADLINE))
    t0 = time.perf_counter()
    result = dag.run()
    elapsed = time.perf_counter() - t0
    error = result.node_results["s"].error
    return elapsed, error.type if error is not None else "none"


def stop_on_cancel(code: str) -> tuple[float, str]:
    dag = DAG("stop")
    dag.add_node(Node("s", [], LuaExecutor(code)))
    handle = dag.start()
    cancelled_at = None
    for event in handle.events():
        if event.kind == "node_started":
            time.sleep(CANCEL_AFTER)
            cancelled_at = time.perf_counter()
            handle.cancel()
    result = handle.wait(timeout=30)
    assert cancelled_at is not None
    return time.perf_counter() - cancelled_at, result.status.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name, code in FORMS:
        deadline = [stop_at_deadline(code) for _ in range(args.repeats)]
        cancel = [stop_on_cancel(code) for _ in range(args.repeats)]
        rows.append(
            {
                "form": name,
                "deadline_median_x": statistics.median(t for t, _ in deadline) / DEADLINE,
                "deadline_worst_x": max(t for t, _ in deadline) / DEADLINE,
                "deadline_errors": sorted({e for _, e in deadline}),
                "cancel_median_ms": statistics.median(t for t, _ in cancel) * 1000,
                "cancel_worst_ms": max(t for t, _ in cancel) * 1000,
                "cancel_statuses": sorted({s for _, s in cancel}),
            }
        )
    if args.json:
        print(json.dumps({"deadline_s": DEADLINE, "load": os.getloadavg(), "rows": rows}))
        return
    print(f"deadline {DEADLINE:.1f} s; load average {os.getloadavg()[0]:.2f}; {args.repeats} runs")
    print(f"{'form':34} {'deadline x (med/worst)':>24} {'cancel ms (med/worst)':>23}  end")
    for r in rows:
        print(
            f"{r['form']:34} {r['deadline_median_x']:11.2f} / {r['deadline_worst_x']:5.2f}x"
            f" {r['cancel_median_ms']:12.1f} / {r['cancel_worst_ms']:6.1f}"
            f"  {','.join(r['deadline_errors'])}; {','.join(r['cancel_statuses'])}"
        )
    worst_x = max(r["deadline_worst_x"] for r in rows)
    worst_ms = max(r["cancel_worst_ms"] for r in rows)
    print(
        f"worst: {worst_x:.2f}x the deadline (bound 2x), {worst_ms:.1f} ms after a cancel", end=""
    )
    print(" (bound 100)")
    assert all(s == [RunStatus.CANCELLED.value] for s in (r["cancel_statuses"] for r in rows))


if __name__ == "__main__":
    main()
