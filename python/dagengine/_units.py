"""Parsing and canonical formatting of durations and byte sizes used in specs and the CLI.

Formatting is chosen so that ``format(parse(format(x))) == format(x)``: a spec written by
``DAG.to_spec`` reads back to the same spec.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

# Largest first: formatting picks the largest unit that gives a whole number.
_DURATION_UNITS: tuple[tuple[str, float], ...] = (
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
#: Units a duration may be written in (``d`` is read, never written: a spec keeps ``24h``).
_PARSE_UNITS: tuple[tuple[str, float], ...] = (("d", 86400.0), *_DURATION_UNITS)
_DURATION_TOKEN = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds from a number (seconds) or a string like ``500ms``, ``10s``, ``1m30s``, ``2h``,
    ``30d``.

    Units must appear largest first and at most once each. Raises ``ValueError`` (message
    without location; callers add it) for anything else, and for negative or non-finite values.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of seconds or a string like '10s', got bool")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_str(value.strip(), what)
    else:
        raise TypeError(
            f"{what} must be a number of seconds or a string like '10s', got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of seconds, got {value!r}")
    return seconds


def _parse_duration_str(text: str, what: str) -> float:
    bad = ValueError(
        f"invalid {what} {text!r}: expected a number of seconds or a string like "
        "'500ms', '10s', '1m30s', '2h', '7d'"
    )
    if not text:
        raise bad
    pos = 0
    total = 0.0
    last_rank = -1
    order = [unit for unit, _ in _PARSE_UNITS]
    while pos < len(text):
        match = _DURATION_TOKEN.match(text, pos)
        if match is None:
            raise bad
        rank = order.index(match.group(2))
        # "1m30s" is fine, "30s1m" or "1s2s" is almost certainly a typo.
        if rank <= last_rank:
            raise bad
        last_rank = rank
        total += float(match.group(1)) * _PARSE_UNITS[rank][1]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str | float:
    """Canonical spec form: the largest unit among h, m, s, ms that gives a whole number
    (``90.0 -> "90s"``, ``120.0 -> "2m"``, ``0.25 -> "250ms"``); a plain number of seconds when
    none does (sub-millisecond precision)."""
    for unit, size in _DURATION_UNITS:
        count = seconds / size
        whole = round(count)
        # Tolerance absorbs float noise such as 0.7 * 1000 == 699.9999999999999.
        if whole >= 1 and math.isclose(count, whole, rel_tol=1e-9, abs_tol=1e-9):
            return f"{whole}{unit}"
    if seconds == 0:
        return "0s"
    return seconds


def parse_size(value: object, *, what: str = "size") -> int:
    """Bytes from an int or a string like ``"64MiB"``, ``"512KiB"``, ``"10MB"``, ``"100B"``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer number of bytes or a string like '64MiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or (match.group(2) or "b") not in _SIZE_UNITS:
            raise ValueError(
                f"invalid {what} {value!r}: expected bytes or a string like '64MiB', '512KiB', "
                "'10MB'"
            )
        size = int(match.group(1)) * _SIZE_UNITS.get(match.group(2) or "b", 1)
    else:
        raise TypeError(
            f"{what} must be an integer number of bytes or a string like '64MiB', "
            f"got {type(value).__name__}"
        )
    if size <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return size


def format_size(size: int) -> int | str:
    """Canonical spec form: ``"<n>GiB"``/``"MiB"``/``"KiB"`` when exact, else plain bytes."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return size
