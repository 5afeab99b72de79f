"""Shared pieces of the benchmark suite: graph shapes, timing, memory probes, table printing.

Every section module imports from here; nothing in this module measures anything by itself.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What one invocation of ``run.py`` measures and how often."""

    quick: bool = False
    #: Nodes of the run-time shapes (sections 1-3); the targets are stated at 10,000.
    nodes: int = 10_000
    #: Nodes of the validation + topological-order graph (section 4).
    topo_nodes: int = 1_000_000
    #: Timed repetitions of a dagengine run (the median is reported).
    repeats: int = 7
    #: Timed repetitions of the (much slower) baselines.
    baseline_repeats: int = 5
    #: Untimed runs before the timed ones (imports, thread pools, caches, Lua chunk cache).
    warmup: int = 1
    #: Runs of the same DAG in the memory-growth section.
    memory_runs: int = 1_900
    seed: int = 20240531


# --- graph shapes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A DAG as parent lists: node ``i`` is ``"n{i}"`` and depends on ``parents[i]``.

    Every parent index is smaller than its child's, so index order is a topological order.
    """

    name: str
    parents: list[tuple[int, ...]]

    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self.parents)

    @property
    def edges(self) -> int:
        """Number of dependency edges."""
        return sum(len(p) for p in self.parents)

    def ids(self) -> list[str]:
        """Node ids, ``n0`` .. ``n{n-1}``."""
        return [node_id(i) for i in range(self.n)]

    def leaves(self) -> list[int]:
        """Indices of the nodes no other node depends on."""
        has_child = [False] * self.n
        for parents in self.parents:
            for p in parents:
                has_child[p] = True
        return [i for i, child in enumerate(has_child) if not child]


def node_id(i: int) -> str:
    """The id of node ``i`` in every shape."""
    return f"n{i}"


def chain(n: int) -> Shape:
    """``n0 -> n1 -> ... -> n{n-1}``: no parallelism at all, one ready node at a time."""
    return Shape(f"chain {n:,}", [()] + [(i - 1,) for i in range(1, n)])


def fan(width: int, *, fan_in: bool = True) -> Shape:
    """One source, ``width`` independent middle nodes, and (with ``fan_in``) one sink that
    depends on all of them: ``1 -> width -> 1``."""
    parents: list[tuple[int, ...]] = [()] + [(0,)] * width
    if fan_in:
        parents.append(tuple(range(1, width + 1)))
        return Shape(f"fan 1→{width:,}→1", parents)
    return Shape(f"fan-out 1→{width:,}", parents)


def layered(n: int, width: int, k: int, seed: int) -> Shape:
    """``n // width`` layers of ``width`` nodes; every node after the first layer picks ``k``
    distinct parents uniformly among all nodes of the previous layers (fixed ``seed``)."""
    offsets, flat = layered_csr(n, width, k, seed)
    parents = [tuple(flat[offsets[i] : offsets[i + 1]]) for i in range(n)]
    return Shape(f"layered {n:,} ({n // width}x{width}, {k} parents)", parents)


def layered_csr(n: int, width: int, k: int, seed: int) -> tuple[list[int], list[int]]:
    """The :func:`layered` graph in CSR form: node ``i``'s parents are
    ``parents[offsets[i]:offsets[i + 1]]``. Built directly as two flat lists so that a
    million-node graph costs no large temporaries."""
    rng = random.Random(seed)
    rand = rng.random
    offsets = [0] * (n + 1)
    flat: list[int] = []
    for i in range(width, n):
        limit = (i // width) * width
        picked: set[int] = set()
        want = min(k, limit)
        while len(picked) < want:
            picked.add(int(rand() * limit))
        flat.extend(sorted(picked))
        offsets[i + 1] = len(flat)
    return offsets, flat


# --- timing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed repetitions of one measurement."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median seconds."""
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """Fastest repetition, seconds."""
        return min(self.samples)

    def per_item_us(self, items: int) -> float:
        """Median microseconds per item (node, call)."""
        return self.median / items * 1e6


def measure(fn: Callable[[], object], repeats: int, warmup: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    A full collection runs before every repetition so that garbage from the previous one is not
    charged to the next; the collector stays enabled while timing (it is part of the real cost).
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(tuple(samples))


def time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` took, and what it returned."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# --- memory -----------------------------------------------------------------------------------


def proc_status_kib(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not found in /proc/self/status")


def rss_kib() -> int:
    """Current resident set size, KiB."""
    return proc_status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size since start (or since :func:`reset_peak_rss`), KiB."""
    return proc_status_kib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0: write ``5`` to ``clear_refs``).

    Returns False when the kernel refuses; the peak is then only comparable to the earlier peak.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


# --- output -----------------------------------------------------------------------------------


def fmt_us(value: float | None) -> str:
    """Microseconds with sensible precision; ``—`` when not measured."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    """A speed-up factor, ``12.3x``; ``—`` when not measured."""
    if value is None:
        return "—"
    return f"{value:.1f}x" if value < 100 else f"{value:,.0f}x"


def fmt_seconds(value: float | None) -> str:
    """Seconds, or milliseconds below one second."""
    if value is None:
        return "—"
    return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"


def ratio(baseline: float | None, ours: float | None) -> float | None:
    """``baseline / ours`` (how many times faster dagengine is), ``None`` if either is missing."""
    if baseline is None or ours is None or ours <= 0:
        return None
    return baseline / ours


@dataclass
class Table:
    """A plain-text table: first column left-aligned, the others right-aligned."""

    title: str
    headers: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        """Append a row (one string per header)."""
        if len(cells) != len(self.headers):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.headers)}")
        self.rows.append(list(cells))

    def render(self) -> str:
        """The table as text, with its title and notes."""
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            parts = [
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        rule = "  ".join("-" * w for w in widths)
        out = [self.title, line(self.headers), rule, *(line(r) for r in self.rows)]
        out.extend(f"  {note}" for note in self.notes)
        return "\n".join(out)

    def print(self) -> None:
        """Print the table followed by a blank line."""
        print(self.render(), end="\n\n", flush=True)


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
