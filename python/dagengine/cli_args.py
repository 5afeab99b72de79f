"""Argument types and environment fallbacks the command line's subcommands share
(:mod:`dagengine.cli`, :mod:`dagengine.cli_engine`): each type raises
``argparse.ArgumentTypeError`` (reported as one line, exit code 2), and an environment value
or a file that is wrong raises :class:`~dagengine.cli_inputs.BadInput` naming it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagengine._units import parse_duration
from dagengine.cli_inputs import BadInput
from dagengine.logconfig import configure_logging
from dagengine.spec import MAX_SECONDS

__all__ = [
    "MAX_COUNT",
    "address",
    "boolean",
    "configure_process_logging",
    "duration",
    "env_value",
    "port_number",
    "positive_int",
    "positive_number",
    "read_file",
]

#: The largest count a flag takes (``--max-parallel``, ``--capacity``, ``--limit``): a 32-bit
#: count, as the engine's wire format holds it.
MAX_COUNT = 2**32 - 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text} is out of range (1..{MAX_COUNT})")
    return value


def duration(text: str) -> float:
    try:
        # A bare number on the command line means seconds, as in specs.
        value: object = float(text)
    except ValueError:
        value = text
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    if seconds > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text} is out of range (at most {MAX_SECONDS:.0e} seconds)"
        )
    return seconds


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def address(text: str) -> str:
    from dagengine.engine import split_address

    try:
        split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def env_value(name: str, parse: Callable[[str], Any]) -> Any:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        return parse(text.strip())
    except argparse.ArgumentTypeError as exc:
        raise BadInput(f"environment variable {name}: {exc}") from None


def read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"{what} {path}: {exc.strerror or exc}") from None


def configure_process_logging(args: argparse.Namespace) -> None:
    try:
        configure_logging(args.log_format, args.log_level)
    except ValueError as exc:  # a bad DAGENGINE_LOG_FORMAT / DAGENGINE_LOG_LEVEL
        raise BadInput(str(exc)) from None
