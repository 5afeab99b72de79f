"""A real ``dagengine serve`` for the browser tests: workflows (specs and the ``uitasks``
module) in a temporary folder, and gate files that let a test release a waiting node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

SPECS = {
    "quick.yaml": """
id: quick
version: 1.0.0
nodes:
  - {id: a, lua: "return {v = (inputs.n or 0) + 1}"}
  - {id: b, deps: [a], lua: "return {v = results.a.v * 2}"}
""",
    "gated.yaml": """
id: gated
version: 1.0.0
nodes:
  - {id: first, lua: "return {ok = true}"}
  - {id: wait, deps: [first], python: "uitasks:wait_gate"}
  - {id: after, deps: [wait], lua: "return {done = true}"}
""",
    "failing.yaml": """
id: failing
version: 1.0.0
nodes:
  - {id: fine, python: "uitasks:chatty"}
  - {id: boom, deps: [fine], python: "uitasks:boom"}
  - {id: never, deps: [boom], lua: "return {}"}
""",
    "flaky.yaml": """
id: flaky
version: 1.0.0
nodes:
  - {id: once, python: "uitasks:count_once"}
  - {id: gate, deps: [once], python: "uitasks:fail_unless_gate"}
  - {id: last, deps: [gate], lua: "return {end_ = true}"}
""",
    "versions-1.yaml": """
id: versioned
version: 1.0.0
nodes:
  - {id: v1, lua: "return {v = 1}"}
""",
    "versions-2.yaml": """
id: versioned
version: 1.1.0
nodes:
  - {id: v11, lua: "return {v = 11}"}
""",
    "typed.yaml": """
id: typed
version: 1.0.0
inputs:
  type: object
  required: [name]
  properties:
    name: {type: string, description: who to greet}
    factor: {type: integer, minimum: 1, default: 2}
    mode: {enum: [fast, slow]}
    loud: {type: boolean}
    tags: {type: array, items: {type: string}}
nodes:
  - id: greet
    lua: |
      return {text = inputs.name .. ' x' .. inputs.factor, mode = inputs.mode,
              loud = inputs.loud, tags = inputs.tags}
""",
    "cond.yaml": """
id: cond
version: 1.0.0
nodes:
  - {id: probe, lua: "return {x = 1}"}
  - {id: big, deps: [probe], when: "results.probe.x > 5", lua: "return {}"}
  - {id: small, deps: [probe], when: "results.probe.x <= 5", lua: "return {}"}
""",
    "mapped.yaml": """
id: mapped
version: 1.0.0
nodes:
  - {id: src, lua: "return {items = {1, 2, 3, 4}}"}
  - {id: sq, deps: [src], map: results.src.items, allow_partial: true, python: "uitasks:square"}
  - {id: after, deps: [sq], lua: "return {}"}
""",
    "uitasks.py": """
import logging
import os
import time

GATES = os.environ["UI_GATES"]
log = logging.getLogger("uitasks")


def _wait(name, seconds=60.0):
    path = os.path.join(GATES, name)
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


def wait_gate(ctx):
    name = ctx.inputs.get("gate", "gate")
    print(f"waiting for gate {name}", flush=True)
    opened = _wait(name)
    log.warning("gate %s opened=%s", name, opened)
    return {"gate": name, "opened": opened}


def chatty(ctx):
    print("hello from fine")
    log.info("fine is done")
    return {"n": 1}


def square(ctx):
    if ctx.item == 3:
        raise ValueError("three is bad")
    return {"v": ctx.item * ctx.item}


def boom(ctx):
    log.warning("about to fail")
    raise ValueError("kaboom")


def count_once(ctx):
    path = os.path.join(GATES, "count-" + ctx.inputs.get("tag", "x"))
    with open(path, "a") as f:
        f.write("ran\\n")
    return {"ran": True}


def fail_unless_gate(ctx):
    if not os.path.exists(os.path.join(GATES, "flaky-" + ctx.inputs.get("tag", "x"))):
        raise RuntimeError("the gate is closed")
    return {"passed": True}


def evil(ctx):
    print("<script>window.__xss=5</script>")
    return {
        "html": "<img src=z onerror=window.__xss=6>",
        "id": "</pre><script>window.__xss=7</script>",
    }
""",
}


IMG_ID = "<img src=x onerror=window.__xss=1>"
SCRIPT_ID = "<script>window.__xss=4</script>"
#: Node ids, an output and log lines that would run script if the UI parsed them as HTML.
SPECS["evil.json"] = json.dumps(
    {
        "id": "evil",
        "version": "1.0.0",
        "nodes": [
            {
                "id": IMG_ID,
                "lua": "log('<img src=y onerror=window.__xss=3>') "
                "return {html = '<script>window.__xss=2</script>'}",
            },
            {"id": SCRIPT_ID, "deps": [IMG_ID], "python": "uitasks:evil"},
        ],
    }
)


class Server:
    """``dagengine serve`` in a subprocess; :meth:`open` releases a gate file."""

    def __init__(self, folder: Path, gates: Path, config: Path | None = None) -> None:
        self.gates = gates
        store = folder.parent / "store.db"
        args = [sys.executable, "-m", "dagengine", "serve", "--workflows", str(folder),
                "--store", str(store), "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
        if config is not None:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=folder,
            env={**os.environ, "UI_GATES": str(gates)},
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(60)
        if not line or "listening on" not in line[0]:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"serve did not start: {line} {err}")
        self.url = line[0].split()[-1]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def open(self, name: str) -> None:
        (self.gates / name).write_text("open")

    def stop(self) -> None:
        for path in ("gate", "never"):  # let waiting nodes end
            self.open(path)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def make_server(tmp: Path, config_text: str | None = None) -> Server:
    folder = tmp / "workflows"
    folder.mkdir()
    gates = tmp / "gates"
    gates.mkdir()
    for name, text in SPECS.items():
        (folder / name).write_text(text.lstrip())
    config = None
    if config_text is not None:
        config = tmp / "serve.yaml"
        config.write_text(config_text)
    return Server(folder, gates, config)
