"""Engine service benchmark: end-to-end runs of a 3-node Lua workflow through one engine
process from the Python client, beside a plain grpcio unary echo on the same machine in the
same run (the transport's own ceiling).

    python benches/bench_engine.py [--runs N] [--quick]

Measured in one pass per row (latency percentiles over every call of the row):

* runs/s and p50/p99 latency with 1 and with 32 runs in flight (threads, one shared client),
  for ``EngineClient.run`` (the engine streams only the result) and ``EngineClient.stream``
  (every event of the run, as an orchestrator reads them);
* the same for the echo (a grpcio server in its own process echoing a payload the size of a
  RunRequest; a grpcio client in this process);
* the engine's own CPU per run: the engine process's user CPU time (``/proc/PID/stat``) over
  the measured ``run()`` calls, divided by the runs — everything the engine's own code spends
  (Rust, and Python, which is idle here), so an upper bound of the Rust side's cost; beside it
  the system time (the kernel's TCP and thread wake-ups on the engine's behalf) and the total,
  and the same for ``Info()``, an RPC that does nothing: the transport's share;
* the engine's idle RSS after start-up.

Targets (issue 3), printed as met / not met: 32 in flight ≥ 60% of the echo's calls/s; p50
with 1 in flight ≤ 2x the echo's p50; engine's own (user, Rust-side) CPU per run ≤ 50 µs;
idle RSS ≤ 60 MB.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from bench_service import Load, drive, workflow
from dagengine.engine import EngineClient, build_run_request

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

ECHO_SERVER = r"""
import sys
from concurrent import futures
import grpc

def echo(request, context):
    return request

handler = grpc.method_handlers_generic_handler(
    "bench.Echo",
    {"Echo": grpc.unary_unary_rpc_method_handler(echo, lambda b: b, lambda b: b)},
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"""


def start_process(args: list[str], pattern: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(pattern, line)
    if match is None:
        proc.kill()
        raise SystemExit(f"could not start {args!r}: {line!r}")
    return proc, match.group(1)


@dataclass(frozen=True)
class Cpu:
    """A process's CPU time so far: user (its own code) and system (the kernel on its behalf)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def cpu_times(pid: int) -> Cpu:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return Cpu(int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4000, help="calls per measurement")
    parser.add_argument("--quick", action="store_true", help="fewer calls (500)")
    args = parser.parse_args(argv)
    total = 500 if args.quick else args.runs

    engine, port = start_process(
        [
            sys.executable,
            "-m",
            "dagengine",
            "engine",
            "--port",
            "0",
            "--capacity",
            "64",
            "--engine-id",
            "bench",
        ],
        r"listening on \S+:(\d+)",
    )
    echo, echo_port = start_process([sys.executable, "-c", ECHO_SERVER], r"(\d+)")
    try:
        time.sleep(0.5)  # let start-up allocation settle before reading idle RSS
        idle_rss = rss_mib(engine.pid)
        client = EngineClient(f"127.0.0.1:{port}")
        request = build_run_request(workflow(), {"factor": 3})
        payload = request.SerializeToString()
        channel = grpc.insecure_channel(f"127.0.0.1:{echo_port}")
        echo_rpc = channel.unary_unary("/bench.Echo/Echo", lambda b: b, lambda b: b)
        run_counter = iter(range(10**9))

        def run_once(_: int = 0) -> object:
            """``EngineClient.run``: the engine streams only the result."""
            result = client.run(request.workflow, {"factor": 3}, run_id=f"r{next(run_counter)}")
            if result.status.value != "succeeded":
                raise SystemExit(f"benchmark run failed: {result.error}")
            return result

        def stream_once(_: int = 0) -> object:
            """``EngineClient.stream``: every event, as an orchestrator reads them."""
            req = build_run_request(request.workflow, {"factor": 3}, run_id=f"s{next(run_counter)}")
            result = client.stream_request(req).wait()
            if result.status.value != "succeeded":
                raise SystemExit(f"benchmark run failed: {result.error}")
            return result

        def echo_once(_: int = 0) -> object:
            return echo_rpc(payload)

        for _ in range(200):  # warm-up: connections, compiled chunks, pools
            run_once()
            stream_once()
            echo_once()
        loads: list[Load] = []
        cpu_runs = 0
        cpu_used = Cpu(0.0, 0.0)
        cpu_by_row: dict[int, Cpu] = {}
        for in_flight in (1, 32):
            loads.append(drive("echo", echo_once, in_flight, total))
            before = cpu_times(engine.pid)
            loads.append(drive("run", run_once, in_flight, total))
            used = cpu_times(engine.pid) - before
            cpu_by_row[in_flight] = used
            cpu_used = Cpu(cpu_used.user + used.user, cpu_used.system + used.system)
            cpu_runs += total
            loads.append(drive("stream", stream_once, in_flight, total))
        # The floor: an RPC that does no work at all (Info), same client, 32 in flight.
        before = cpu_times(engine.pid)
        drive("info", lambda _: client.info(), 32, total)
        info_cpu = cpu_times(engine.pid) - before
        client.close()
        channel.close()
    finally:
        for proc in (engine, echo):
            proc.terminate()
        for proc in (engine, echo):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(
        f"engine service benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores, "
        f"{total} calls per row, RunRequest {len(payload)} bytes"
    )
    print(f"{'':8} {'in flight':>9} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for load in loads:
        print(
            f"{load.name:8} {load.in_flight:>9} {load.per_second:>10,.0f} "
            f"{load.pct(0.5) * 1e3:>8.3f} {load.pct(0.99) * 1e3:>8.3f}"
        )
    by = {(ld.name, ld.in_flight): ld for ld in loads}
    ratio32 = by[("run", 32)].per_second / by[("echo", 32)].per_second
    p50_ratio = by[("run", 1)].pct(0.5) / by[("echo", 1)].pct(0.5)
    user_us = cpu_used.user / cpu_runs * 1e6
    total_us = cpu_used.total / cpu_runs * 1e6
    targets = [
        ("run(), 32 in flight: runs/s ≥ 60% of echo calls/s", f"{ratio32:.0%}", ratio32 >= 0.6),
        ("run(), 1 in flight: p50 ≤ 2x echo p50", f"{p50_ratio:.2f}x", p50_ratio <= 2.0),
        ("engine's own CPU per run() (Rust side) ≤ 50 µs", f"{user_us:.0f} µs", user_us <= 50),
        ("engine idle RSS ≤ 60 MB", f"{idle_rss:.1f} MiB", idle_rss <= 60),
    ]
    print(
        f"\nengine process CPU per call, µs     {'user':>6} {'system':>7} {'total':>6}"
        "   (user = the engine's own code, Rust;"
    )
    rows = [
        ("run(), 1 in flight", cpu_by_row[1], total),
        ("run(), 32 in flight", cpu_by_row[32], total),
        ("run(), both rows", cpu_used, cpu_runs),
        ("Info(), 32 in flight (no work)", info_cpu, total),
    ]
    notes = ["    system = the kernel: TCP, wake-ups)", "", "", ""]
    for (label, cpu, calls), note in zip(rows, notes, strict=True):
        print(
            f"  {label:32} {cpu.user / calls * 1e6:>6.0f} {cpu.system / calls * 1e6:>7.0f} "
            f"{cpu.total / calls * 1e6:>6.0f}{note}"
        )
    print(
        f"the target is read on the user time (the Rust side); the whole process, kernel "
        f"included, spends {total_us:.0f} µs per run, of which Info() shows the transport's "
        f"share (CPU times in {1e6 / CLK_TCK:.0f} µs ticks over {cpu_runs:,} runs)"
    )
    print("\ntargets (issue 3), measured in this run")
    for label, value, ok in targets:
        print(f"  {label:48} {value:>10}  {'met' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
