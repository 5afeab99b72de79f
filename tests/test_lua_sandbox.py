"""The Lua sandbox seen through the Python API: globals, forbidden libraries, limits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from dagengine import (
    DAG,
    ErrorInfo,
    LuaExecutor,
    Node,
    NodeEvent,
    NodeStatus,
    RunStatus,
)

PATIENCE = 10.0


def run_lua(
    code: str, inputs: dict[str, Any] | None = None, **node_kw: Any
) -> tuple[Any, ErrorInfo | None]:
    limits = {k: node_kw.pop(k) for k in ("max_instructions", "max_memory") if k in node_kw}
    dag = DAG("lua")
    dag.add_node(Node("s", [], LuaExecutor(code, **limits), **node_kw))
    result = dag.run(inputs)
    node = result.node_results["s"]
    return node.output, node.error


def test_globals_inputs_results_ctx() -> None:
    dag = DAG("lua")
    dag.add_node(Node("a", [], LuaExecutor("return {rows = {1, 2, 3}}")))
    dag.add_node(
        Node(
            "b",
            ["a"],
            LuaExecutor(
                """
                local s = 0
                for _, v in ipairs(results.a.rows) do s = s + v end
                return {total = s * inputs.factor, node = ctx.node_id, run = ctx.run_id,
                        attempt = ctx.attempt}
                """
            ),
        )
    )
    result = dag.run({"factor": 3}, run_id="r1")
    assert result.ok, result.error
    assert result.outputs["b"] == {"total": 18, "node": "b", "run": "r1", "attempt": 1}


def test_returning_nothing_is_an_empty_output() -> None:
    assert run_lua("local x = 1") == ({}, None)


@pytest.mark.parametrize("name", ["os", "io", "require", "package", "debug", "dofile", "loadfile"])
def test_forbidden_library_is_absent(name: str) -> None:
    output, error = run_lua(f"return {{kind = type({name})}}")
    assert error is None
    assert output == {"kind": "nil"}


@pytest.mark.parametrize("name", ["string", "table", "math", "utf8", "json"])
def test_safe_library_is_present(name: str) -> None:
    assert run_lua(f"return {{kind = type({name})}}") == ({"kind": "table"}, None)


def test_binary_chunks_are_refused() -> None:
    output, error = run_lua(
        'local f, err = load("\\27Lua\\84\\0") return {loaded = f ~= nil, err = err}'
    )
    assert error is None
    assert output["loaded"] is False
    assert "binary" in output["err"]
    assert run_lua("return {dump = type(string.dump)}")[0] == {"dump": "nil"}


def test_json_helper_and_log() -> None:
    events: list[NodeEvent] = []
    dag = DAG("lua")
    dag.add_node(
        Node(
            "s",
            [],
            LuaExecutor(
                'log("hello", 42) return {enc = json.encode({a = 1}), dec = json.decode("[1,2]")}'
            ),
        )
    )
    result = dag.run(on_event=events.append)
    assert result.outputs["s"] == {"enc": '{"a":1}', "dec": [1, 2]}
    logs = [e for e in events if e.kind == "node_log"]
    assert logs
    assert logs[0].node_id == "s"
    assert logs[0].detail is not None
    assert "hello" in str(logs[0].detail["message"])


def test_globals_do_not_leak_between_runs() -> None:
    assert run_lua("leaked_global = 1 return {}") == ({}, None)
    assert run_lua("return {kind = type(leaked_global)}") == ({"kind": "nil"}, None)


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ('error("boom")', "LuaRuntimeError"),
        ("return 5", "LuaBadReturn"),
        ("return {1, 2, 3}", "LuaBadReturn"),
    ],
)
def test_script_errors_fail_the_node(code: str, error_type: str) -> None:
    output, error = run_lua(code)
    assert output is None
    assert error is not None
    assert error.type == error_type


def test_a_lua_error_carries_the_scripts_frames_only() -> None:
    _, error = run_lua("local function f()\n  error('boom')\nend\nf()\nreturn {}")
    assert error is not None
    assert error.message == "node 's': s:2: boom"
    assert error.traceback == (
        "stack traceback:\n\t[C]: in function 'error'\n\ts:2: in local 'f'\n\ts:4: in main chunk"
    )


def test_endless_loop_hits_the_instruction_limit_and_the_next_run_works() -> None:
    _output, error = run_lua("while true do end", max_instructions=200_000)
    assert error is not None
    assert error.type == "LuaInstructionLimit"
    assert "200000" in error.message
    assert run_lua("return {ok = true}") == ({"ok": True}, None)


# With an instruction budget far beyond what runs in the time limit the script has the
# limit hook from its start; with none, the watchdog sets it once the script runs long.
BUDGETS = [pytest.param(10**15, id="budget"), pytest.param(None, id="no-budget")]


@pytest.mark.parametrize("budget", BUDGETS)
def test_endless_loop_hits_the_timeout_within_twice_the_limit(budget: int | None) -> None:
    limit = 0.3
    dag = DAG("lua")
    # The clock must stop it.
    endless = LuaExecutor("while true do end", max_instructions=budget)
    dag.add_node(Node("s", [], endless, timeout=limit))
    t0 = time.monotonic()
    result = dag.run()
    elapsed = time.monotonic() - t0
    node = result.node_results["s"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type in ("LuaTimeout", "NodeTimeout")
    assert node.duration is not None
    assert node.duration < 2 * limit
    assert elapsed < 2 * limit + 0.5  # the run itself ends promptly too
    assert run_lua("return {ok = true}") == ({"ok": True}, None)


@pytest.mark.parametrize("budget", BUDGETS)
def test_cancellation_interrupts_running_lua(budget: int | None) -> None:
    dag = DAG("lua")
    dag.add_node(Node("s", [], LuaExecutor("while true do end", max_instructions=budget)))
    handle = dag.start()
    for event in handle.events():
        if event.kind == "node_started":
            handle.cancel()
    result = handle.wait(timeout=PATIENCE)
    assert result.status is RunStatus.CANCELLED
    assert result.node_results["s"].status is NodeStatus.CANCELLED


def test_memory_bomb_fails_within_twice_the_limit_and_the_next_run_works() -> None:
    # A fresh process, so its peak RSS measures this script and nothing else.
    limit = 64 * 1024 * 1024
    script = textwrap.dedent(
        f"""
        import json, resource
        from dagengine import DAG, LuaExecutor, Node
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        bomb = DAG("bomb")
        bomb.add_node(Node("s", [], LuaExecutor(
            'local t = {{}} local i = 0 '
            'while true do i = i + 1 t[i] = string.rep("x", 4096) .. i end',
            max_memory={limit})))
        result = bomb.run()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ok = DAG("ok")
        ok.add_node(Node("s", [], LuaExecutor("return {{fine = true}}")))
        again = ok.run()
        error = result.node_results["s"].error
        print(json.dumps({{"type": error.type if error else None, "grew_kib": after - before,
                           "next": again.outputs.get("s")}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["type"] == "LuaMemoryLimit"
    assert report["grew_kib"] * 1024 < 2 * limit
    assert report["next"] == {"fine": True}


def test_memory_limit_in_process_and_next_run() -> None:
    _output, error = run_lua(
        'local t = {} local i = 0 while true do i = i + 1 t[i] = string.rep("y", 1024) .. i end',
        max_memory=2 * 1024 * 1024,
    )
    assert error is not None
    assert error.type == "LuaMemoryLimit"
    assert run_lua("return {ok = true}") == ({"ok": True}, None)


# Code Lua runs where its hooks cannot reach, and matches that never return to the VM
# (issue 17, point 3): each must stop at the node's deadline and on a cancel. The
# subjects of the patterns are long enough that their step budget lasts for seconds.
BIG = "local s = string.rep('a', 10 * 1024 * 1024)"
LOOP_CLOSE = "setmetatable({}, {__close = function() while true do end end})"
UNSTOPPABLE = [
    pytest.param(
        "xpcall(function() error('x') end, function() while true do end end)",
        id="message-handler",
    ),
    pytest.param(
        "xpcall(function() while true do end end, function() while true do end end)",
        id="message-handler-after-limit",
    ),
    pytest.param(
        f"do local x <close> = {LOOP_CLOSE} while true do end end",
        id="close-after-limit",
    ),
    pytest.param(
        f"coroutine.wrap(function() local x <close> = {LOOP_CLOSE} while true do end end)()",
        id="close-in-wrapped-coroutine",
    ),
    pytest.param(
        "string.find(string.rep('a', 1e7), '.-.-.-.-.-b')",
        id="string.find",
    ),
    pytest.param(
        "local x = ('a'):rep(1e7):match('.-.-.-.-.-b')",
        id="string.match",
    ),
    pytest.param(
        "for m in string.gmatch(string.rep('a', 1e7), '.-.-.-.-.-b') do end",
        id="string.gmatch",
    ),
    pytest.param(
        "string.gsub(string.rep('a', 1e7), '.-.-.-.-.-b', 'x')",
        id="string.gsub",
    ),
    pytest.param(
        "string.gsub(string.rep('a', 1e7), '.-.-.-.-.-b', function() end)",
        id="string.gsub-function",
    ),
    # Lua's string.rep copied once per repetition without returning to the VM: 10^18 empty
    # copies ran for ever, a 30 MB result took about 0.7 s, and the count hook came only
    # every 1,000 instructions of such a loop.
    pytest.param("while true do local s = string.rep('', 1e18) end", id="string.rep-empty"),
    pytest.param("while true do local s = ('a'):rep(3e7) end", id="string.rep-long"),
    # A loop of long C steps: the hook ran every 1,000 instructions, each a 10 MB copy
    # (seconds in all); once the deadline has passed or a cancel came it runs at the next.
    pytest.param(f"{BIG} while true do local u = s:upper() end", id="upper-looped"),
    pytest.param(
        f"coroutine.wrap(function() {BIG} while true do local u = s:lower() end end)()",
        id="lower-looped-in-coroutine",
    ),
    pytest.param(
        "local t = {} for i = 1, 2e5 do t[i] = 'abcdefghijklmnopqrstuvwxyz0123456789' end "
        "while true do local c = table.concat(t) end",
        id="table.concat-looped",
    ),
    pytest.param(
        "local t = {} for i = 1, 3e5 do t[i] = (i * 7919) % 300007 end "
        "while true do table.sort(t) end",
        id="table.sort-looped",
    ),
]

# "Never" is what failed; these bounds only tell a stop from a hang.
HANG = 2.0


def assert_no_script_keeps_running() -> None:
    """The node's end must be its script's: a run can report a timeout or a cancel while the
    script's thread spins on (a spinning thread uses about a core, an idle process ~0)."""
    give_up = time.monotonic() + HANG
    while True:
        before = time.process_time()
        time.sleep(0.2)
        used = time.process_time() - before
        if used < 0.04:
            return
        assert time.monotonic() < give_up, f"a thread still spins: {used:.2f} s of CPU in 0.2 s"


@pytest.mark.parametrize("code", UNSTOPPABLE)
def test_unstoppable_forms_stop_at_the_node_timeout(code: str) -> None:
    limit = 0.2
    dag = DAG("lua")
    dag.add_node(Node("s", [], LuaExecutor(code), timeout=limit))
    t0 = time.monotonic()
    result = dag.run()
    elapsed = time.monotonic() - t0
    node = result.node_results["s"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type in ("LuaTimeout", "NodeTimeout"), node.error
    assert elapsed < HANG
    assert_no_script_keeps_running()
    assert run_lua("return {ok = true}") == ({"ok": True}, None)


@pytest.mark.parametrize("code", UNSTOPPABLE)
def test_unstoppable_forms_stop_on_a_cancel(code: str) -> None:
    dag = DAG("lua")
    dag.add_node(Node("s", [], LuaExecutor(code)))
    handle = dag.start()
    cancelled_at = None
    for event in handle.events():
        if event.kind == "node_started":
            time.sleep(0.05)  # into the loop
            cancelled_at = time.monotonic()
            handle.cancel()
    result = handle.wait(timeout=PATIENCE)
    assert cancelled_at is not None
    assert time.monotonic() - cancelled_at < HANG
    assert result.status is RunStatus.CANCELLED
    assert result.node_results["s"].status is NodeStatus.CANCELLED
    assert_no_script_keeps_running()
    assert run_lua("return {ok = true}") == ({"ok": True}, None)


def test_a_pattern_that_backtracks_too_long_is_a_lua_error() -> None:
    # 20,000 bytes: a budget of 3,000,000 steps, far below the n^3 this pattern needs.
    code = """
    local ok, err = pcall(string.find, string.rep('a', 2e4), '.-.-.-b')
    local found = ('key = value'):match('(%w+)%s*=%s*(%w+)')
    return {ok = ok, err = err, found = found}
    """
    output, error = run_lua(code)
    assert error is None
    assert output == {
        "ok": False,
        "err": "pattern too complex (more than 3000000 steps)",
        "found": "key",
    }
    _, error = run_lua("string.gsub(string.rep('a', 2e4), '.-.-.-b', 'x')")
    assert error is not None
    assert error.type == "LuaRuntimeError"
    assert "s:1: pattern too complex (more than 3000000 steps)" in error.message


def test_a_long_load_stops_at_the_node_timeout() -> None:
    # Lua's parser does not return to the VM while it reads a string chunk: given the
    # whole 130 MB at once, this ran for its full parse, past the timeout, and succeeded.
    code = "local f = load(string.rep('-- a comment\\n', 1e7))"
    dag = DAG("lua")
    dag.add_node(Node("s", [], LuaExecutor(code, max_memory=1024**3), timeout=0.05))
    result = dag.run()
    node = result.node_results["s"]
    assert node.status is NodeStatus.FAILED
    assert node.error is not None
    assert node.error.type in ("LuaTimeout", "NodeTimeout"), node.error
    assert_no_script_keeps_running()
