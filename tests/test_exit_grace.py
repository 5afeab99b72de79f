"""At interpreter exit, a Python node call still in progress on a core thread (its run ended
without it: a node timeout) gets a bounded grace period to notice ``ctx.cancelled`` and
return before the interpreter finalizes (``dagengine._invoke``; the core counts the calls)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import time
    from dagengine import DAG, Node, PythonExecutor

    def slow(ctx):
        while not ctx.cancelled:
            time.sleep(0.01)
        time.sleep(0.3)  # still busy a while after the cancel
        print("left", flush=True)

    dag = DAG("exit")
    dag.add_node(Node("slow", [], PythonExecutor(slow), timeout=0.1))
    result = dag.run()
    print(result.node_results["slow"].error.type, flush=True)
    """
)


def test_an_abandoned_call_returns_before_the_interpreter_exits() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["NodeTimeout", "left"]
