"""HTTP front door benchmark (issue 20): HTTP-started runs of a 3-node Lua workflow through
``dagengine serve`` (embedded engine, SQLite store on disk) beside a bare Starlette/uvicorn
endpoint returning a constant — both servers in their own processes on this machine, loaded
by the same client (64 concurrent keep-alive connections over loopback, a minimal asyncio
HTTP/1.1 client). Each row's load is paired with a load of the bare endpoint right before or
after it (the order alternating from round to round), ``--rounds`` times: on a shared machine
whose load drifts, a row is only compared with the bare endpoint under the same load.

    python benches/bench_http.py [--requests N] [--concurrency C] [--rounds R] [--engines N]
                                 [--baseline PYTHONPATH]

Three ways in, each against the bare endpoint of its pair:

* **sync trigger** — ``POST /hooks/sync``: the request waits for its run's result (200);
* **async trigger** — ``POST /hooks/async``: answered once the run is committed (202);
* **POST /workflows/{id}/runs** — the REST API, answered once the run is committed (202).

And one row of information, the floor under them: the same workflow run by ``dag.run`` in a
handler of the bare server (in-process, nothing stored, no events), paired with the bare
constant the same way. The rows' cost beyond it is what the orchestrator and the store add.

Prints, per row, the median over the rounds of requests/s, p50/p99 latency and the server
process's CPU time a request (a row's counted until its runs have ended: a loaded machine moves
it much less than requests/s), the median of the pair ratios to bare (and their range), the
load average seen, and the issue's targets (sync >= 0.5x, async and POST >= 0.6x, p99 <= 3x
bare) as met / NOT MET. The bare endpoint is the ceiling of uvicorn + Starlette + the client on
this machine; the difference is what the trigger or the REST route, the orchestrator (queue,
dispatch, SQLite writes of the run, its node outputs and its events) and the engine add. After
each row that leaves runs behind (async, POST), the next row waits for them to end, so that it
is not loaded by their execution.

``--baseline PATH`` starts a second ``dagengine serve`` with ``PYTHONPATH=PATH`` (another
checkout's ``python`` folder, with the built ``_core`` extension copied in) and loads it in
turn with this one: an A/B of a change, with the new/old ratios of each row (throughput, p99
and CPU a request).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx

WORKFLOW = """
id: lua3
version: 1.0.0
nodes:
  - {id: a, lua: "return {x = (inputs.n or 1) * 2}"}
  - {id: b, deps: [a], lua: "return {y = results.a.x + 1}"}
  - {id: c, deps: [b], lua: "return {z = results.b.y}"}
"""
CONFIG = """
http: {host: 127.0.0.1, port: 0}
store: state/bench.db
engines: 0
triggers:
  - {type: http, id: sync, path: /hooks/sync, workflow_id: lua3, mode: sync}
  - {type: http, id: async, path: /hooks/async, workflow_id: lua3, mode: async}
"""
BARE = """
import socket
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def const(request):
    await request.body()
    return JSONResponse({"ok": True})

# The floor row: the workflow run in the handler (dag.run, in-process), nothing stored.
import json
import dagengine
dag = dagengine.load_workflow("workflows/lua3.yaml")

async def run(request):
    result = dag.run(json.loads(await request.body())["inputs"])
    return JSONResponse({"success": result.ok, "outputs": dict(result.outputs)})

app = Starlette(
    routes=[Route("/const", const, methods=["POST"]), Route("/run", run, methods=["POST"])]
)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(2048)
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
server.run(sockets=[sock])
"""


SERVE = [sys.executable, "-m", "dagengine", "serve", "--config", "serve.yaml"]
SERVE += ["--workflows", "workflows"]


#: (row, path, target throughput ratio to bare); every row's p99 target is 3x bare's.
ROWS = (
    ("sync trigger", "/hooks/sync", 0.5),
    ("async trigger", "/hooks/async", 0.6),
    ("POST /workflows/{id}/runs", "/workflows/lua3/runs", 0.6),
)
P99_TARGET = 3.0
#: Information, not a way in: the same run started by ``dag.run`` in the bare server's
#: handler, with no store, no events and no orchestrator, paired with the bare constant like
#: the rows above. What it costs beyond the constant is the run alone; what the rows above
#: cost beyond it is the orchestrator and the store (durability, events, history).
FLOOR = ("dag.run in a bare handler (no store)", "/run")


def start(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    holder: list[str] = []
    reader = threading.Thread(target=lambda: holder.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    if not holder or "listening on" not in holder[0]:
        proc.kill()
        raise SystemExit(f"server did not start: {cmd}")
    return proc, holder[0].split()[-1]


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 request on an open connection (a minimal client: httpx
    costs more CPU per request than the bare server does, and would measure itself)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def load(url: str, total: int, concurrency: int) -> tuple[float, list[float], int]:
    """``total`` POSTs from ``concurrency`` connections; (seconds, latencies, failed runs)."""
    parsed = httpx.URL(url)
    body = b'{"inputs": {"n": 3}}'
    request = (
        f"POST {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    failed = 0
    remaining = total
    conns = [await asyncio.open_connection(parsed.host, parsed.port) for _ in range(concurrency)]
    for reader, writer in conns:  # warm-up: connections, code paths, the plan cache
        await _post(reader, writer, request)

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining, failed
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            status, answer = await _post(reader, writer, request)
            latencies.append(time.perf_counter() - t0)
            if status not in (200, 202):
                raise SystemExit(f"{url}: HTTP {status} {answer[:200]!r}")
            if b'"success":false' in answer:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    elapsed = time.perf_counter() - started
    for _, writer in conns:
        writer.close()
    return elapsed, latencies, failed


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process ``pid`` has used so far; NaN where ``/proc``
    cannot tell (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drain(url: str) -> None:
    """Wait until the server has no queued or running run left."""
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not any(
                client.get("/runs", params={"status": status, "limit": 1}).json()["runs"]
                for status in ("queued", "running")
            ):
                return
            time.sleep(0.05)
    raise SystemExit(f"{url}: runs still queued or running after 120 s")


def measure(url: str, path: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(req/s, p50 s, p99 s) of one load of ``url + path``."""
    elapsed, lat, failed = asyncio.run(load(url + path, args.requests, args.concurrency))
    if failed:
        print(f"warning: {failed} of {len(lat)} runs failed ({url}{path})")
    return len(lat) / elapsed, pct(lat, 0.5), pct(lat, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--engines", type=int, default=0, help="local engine processes (0: the embedded engine)"
    )
    parser.add_argument(
        "--baseline", metavar="PYTHONPATH", help="also load a serve run with this PYTHONPATH"
    )
    args = parser.parse_args()
    # name -> row -> per-round (req/s, p50, p99, server CPU seconds a request)
    seen: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        (root / "workflows" / "lua3.yaml").write_text(WORKFLOW)
        (root / "serve.yaml").write_text(CONFIG)
        (root / "bare.py").write_text(textwrap.dedent(BARE))
        procs: list[subprocess.Popen[str]] = []
        try:
            servers: dict[str, tuple[str, int]] = {}
            variants = [("serve", None)]
            if args.baseline:
                (root / "old").mkdir()  # (a store of its own: paths are the config's)
                (root / "old" / "workflows").symlink_to(root / "workflows")
                (root / "old" / "serve.yaml").write_text(CONFIG)
                env = {**os.environ, "PYTHONPATH": args.baseline}
                variants.append(("baseline", env))
            for name, env in variants:
                cwd = root / "old" if env is not None else root
                proc, url = start([*SERVE, "--engines", str(args.engines)], cwd, env)
                procs.append(proc)
                servers[name] = (url, proc.pid)
            bare, bare_url = start([sys.executable, "bare.py"], root)
            procs.append(bare)
            loads = [os.getloadavg()[0]]
            # Pairs: each row and the bare endpoint back to back, which one goes first
            # alternating, so that both see the same load of the machine. (who, where, what,
            # the server's pid, the key its sample is kept under)
            constant = ("bare", bare_url, "/const", bare.pid)
            pairs = [
                ((*constant, f"{name} {row}"), (name, url, path, pid, row))
                for row, path, _target in ROWS
                for name, (url, pid) in servers.items()
            ]
            pairs.append(((*constant, "floor"), ("floor", bare_url, FLOOR[1], bare.pid, FLOOR[0])))
            for round_no in range(args.rounds):
                for pair in pairs:
                    for who, where, what, server, key in pair[::-1] if round_no % 2 else pair:
                        before = cpu_seconds(server)
                        got = measure(where, what, args)
                        if who not in ("bare", "floor"):
                            drain(where)  # (the runs' own work counts too)
                        # (the load's warm-up sends one request a connection too)
                        served = args.requests + args.concurrency
                        used = (cpu_seconds(server) - before) / served
                        seen.setdefault(who, {}).setdefault(key, []).append((*got, used))
                    loads.append(os.getloadavg()[0])
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    report(seen, args, loads)


def server_stack() -> str:
    """The HTTP stack both servers run (the same interpreter and packages, uvicorn's
    defaults: ``loop="auto"`` takes uvloop when installed, ``http="auto"`` httptools when
    installed, else h11), so that the comparison is like for like."""
    import importlib.util

    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {uvicorn.__version__} ({loop}, {parser}) for both servers"


def print_row(
    label: str,
    got: list[tuple[float, float, float, float]],
    bare: list[tuple[float, float, float, float]],
    target: float | None,
) -> None:
    """Print one row against the bare loads of its pairs: medians of its samples, the median
    of the pair ratios of req/s and of p99, and the verdict on ``target`` (the throughput
    ratio; p99 <= 3x bare too), or that the row is information when it has none."""
    med = statistics.median
    ratios = [g[0] / b[0] for g, b in zip(got, bare, strict=True)]
    ratio = med(ratios)
    p99 = med(g[2] / b[2] for g, b in zip(got, bare, strict=True))
    if target is None:
        verdict = "information: the run alone, nothing recorded"
    else:
        met = ratio >= target and p99 <= P99_TARGET
        verdict = f">= {target:.1f}x, p99 <= {P99_TARGET:.0f}x: {'met' if met else 'NOT MET'}"
    print(
        f"{label:36} {med(g[0] for g in got):8.0f} {med(g[1] for g in got) * 1e3:8.2f} "
        f"{med(g[2] for g in got) * 1e3:8.2f} {med(g[3] for g in got) * 1e6:7.0f} "
        f"{ratio:7.2f} {p99:6.1f}  {verdict} (pairs {min(ratios):.2f}-{max(ratios):.2f})"
    )


def report(
    seen: dict[str, dict[str, list[tuple[float, float, float, float]]]],
    args: argparse.Namespace,
    loads: list[float],
) -> None:
    med = statistics.median
    bare_all = [got for pairs in seen["bare"].values() for got in pairs]
    print(
        f"{args.requests} requests per load, {args.concurrency} concurrent clients, loopback, "
        f"{args.rounds} rounds; each row paired with a bare load next to it (order "
        f"alternating): medians, ratios = median of the pair ratios; load average "
        f"{min(loads):.1f}-{max(loads):.1f}; cpu = the server process's CPU a request (a row's "
        f"with its runs' work), which a loaded machine moves less than req/s; {server_stack()}"
    )
    head = (
        f"{'':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu us':>7} {'x bare':>7} {'p99 x':>6}"
    )
    print(f"{head}  target")
    print(
        f"{'bare starlette/uvicorn constant':36} {med(g[0] for g in bare_all):8.0f} "
        f"{med(g[1] for g in bare_all) * 1e3:8.2f} {med(g[2] for g in bare_all) * 1e3:8.2f} "
        f"{med(g[3] for g in bare_all) * 1e6:7.0f}"
    )
    for name, rows in seen.items():
        if name in ("bare", "floor"):
            continue
        for row, _path, target in ROWS:
            label = row if name == "serve" else f"{row} (baseline)"
            print_row(label, rows[row], seen["bare"][f"{name} {row}"], target)
    if "floor" in seen:
        print_row(
            FLOOR[0],
            seen["floor"][FLOOR[0]],
            seen["bare"]["floor"],
            None,
        )
    if "baseline" in seen:
        for row, _, _ in ROWS:
            new, old = seen["serve"][row], seen["baseline"][row]
            ratios = [n[0] / o[0] for n, o in zip(new, old, strict=True)]
            p99s = [n[2] / o[2] for n, o in zip(new, old, strict=True)]
            cpus = [n[3] / o[3] for n, o in zip(new, old, strict=True)]
            print(
                f"new/baseline {row}: throughput {med(ratios):.2f}x "
                f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}), p99 {med(p99s):.2f}x, "
                f"cpu a request {med(cpus):.2f}x (rounds {', '.join(f'{c:.2f}' for c in cpus)})"
            )


if __name__ == "__main__":
    main()
