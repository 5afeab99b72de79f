#!/usr/bin/env python3
"""Print pyproject.toml's requirements, one a line, for ``pip install -r``.

    requirements.py [--build] [--no-deps] EXTRA...

prints the package's dependencies (unless ``--no-deps``), the build system's requirements
(with ``--build``: maturin) and those of each named extra, with the extras' references to
``dagengine[...]`` itself expanded. The Makefile installs the venv from this, so pyproject.toml
is the one list of what the package, its tests and its tools need, and the venv gets them
without building the package (``maturin develop`` builds it once, afterwards).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip vendors the same parser.
    from pip._vendor import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
SELF = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*\[([^\]]*)\]\s*$")


def requirements(project: dict[str, Any], extras: list[str]) -> list[str]:
    """The requirements of ``extras``, self-references expanded, in order, without duplicates."""
    name = project["name"].lower()
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for requirement in optional[extra]:
            own = SELF.match(requirement)
            if own and own.group(1).lower().replace("_", "-") == name:
                pending.extend(e.strip() for e in own.group(2).split(",") if e.strip())
            elif requirement not in out:
                out.append(requirement)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="add [build-system] requires")
    parser.add_argument("--no-deps", action="store_true", help="leave out the dependencies")
    parser.add_argument("extras", nargs="*")
    args = parser.parse_args(argv)
    pyproject = tomllib.loads(PYPROJECT.read_text())
    project = pyproject["project"]
    lines: list[str] = []
    if args.build:
        lines += pyproject["build-system"]["requires"]
    if not args.no_deps:
        lines += project.get("dependencies", [])
    for requirement in requirements(project, args.extras):
        if requirement not in lines:
            lines.append(requirement)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
