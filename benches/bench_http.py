"""HTTP front door benchmark: HTTP-triggered runs of a 3-node Lua workflow through
``dagengine serve`` (embedded engine, SQLite store on disk, sync trigger: each request waits
for its run's result), beside a bare Starlette/uvicorn endpoint returning a constant — both
servers in their own processes on this machine, loaded in the same run by the same client
(64 concurrent keep-alive connections over loopback, a minimal asyncio HTTP/1.1 client).

    python benches/bench_http.py [--requests N] [--concurrency C] [--engines N]

Prints requests/s and p50/p99 latency of each, and the ratios (serve / bare). The bare
endpoint is the ceiling of uvicorn + Starlette + the client on this machine; the difference
is what the trigger, the orchestrator (queue, dispatch, SQLite writes of the run, its node
outputs and its events) and the engine add.
"""

from __future__ import annotations

import argparse
import asyncio
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
  - {type: http, id: bench, path: /hooks/bench, workflow_id: lua3, mode: sync}
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

app = Starlette(routes=[Route("/const", const, methods=["POST"])])
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(2048)
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
server.run(sockets=[sock])
"""


SERVE = [sys.executable, "-m", "dagengine", "serve", "--config", "serve.yaml"]
SERVE += ["--workflows", "workflows"]


def start(cmd: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True)
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
            if status != 200:
                raise SystemExit(f"{url}: HTTP {status} {answer[:200]!r}")
            if b'"success":false' in answer:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    elapsed = time.perf_counter() - started
    for _, writer in conns:
        writer.close()
    return elapsed, latencies, failed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--engines", type=int, default=0, help="local engine processes (0: the embedded engine)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        (root / "workflows" / "lua3.yaml").write_text(WORKFLOW)
        (root / "serve.yaml").write_text(CONFIG)
        (root / "bare.py").write_text(textwrap.dedent(BARE))
        procs: list[subprocess.Popen[str]] = []
        try:
            serve, serve_url = start(
                [*SERVE, "--engines", str(args.engines)],
                root,
            )
            procs.append(serve)
            bare, bare_url = start([sys.executable, "bare.py"], root)
            procs.append(bare)
            rows = {}
            for name, url in (
                ("bare starlette/uvicorn constant", bare_url + "/const"),
                ("dagengine serve, HTTP trigger, 3-node Lua run", serve_url + "/hooks/bench"),
            ):
                elapsed, lat, failed = asyncio.run(load(url, args.requests, args.concurrency))
                rows[name] = (len(lat) / elapsed, pct(lat, 0.5), pct(lat, 0.99))
                if failed:
                    print(f"warning: {failed} of {len(lat)} runs failed ({name})")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, loopback, one run")
    print(f"{'':48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (rate, p50, p99) in rows.items():
        print(f"{name:48} {rate:9.0f} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f}")
    (b_rate, b50, b99), (s_rate, s50, s99) = rows.values()
    print(
        f"ratio serve/bare: throughput {s_rate / b_rate:.2f}x, "
        f"p50 {s50 / b50:.1f}x, p99 {s99 / b99:.1f}x"
    )


if __name__ == "__main__":
    main()
