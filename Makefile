# The one command surface for developers, the README and CI.
#   make demo   build (release), start `dagengine serve` with examples/, submit a run, stop
#   make test   every test: cargo (core, lua, server) and pytest against the built package
#   make lint   cargo fmt/clippy, ruff, mypy, stubtest
#   make bench  side-by-side benchmarks (release build; never part of `make test`)
#   make images  the container image without a registry (deploy/images/build.sh: the wheel, a
#               wheelhouse, a debootstrapped Debian base, deploy/Dockerfile's target prebuilt)
#   make wheel-check  the release wheel: abi3, manylinux (auditwheel), and `dagengine run` of
#               the example from a fresh venv with only the wheel's dependencies (CI runs it)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

# pyproject.toml is the one list of dependencies: the venv gets maturin (the build system's),
# the package's dependencies and the test, dev, kubernetes and postgres extras'
# (.ci/requirements.py prints them), and `make build` then builds the package once. grpcio-tools is pinned there:
# `make proto-check` regenerates the committed stubs and must produce byte-identical files.
REQUIREMENTS := $(PY) .ci/requirements.py
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check
# `maturin build`'s default output folder.
WHEEL_DIR := target/wheels

.PHONY: demo build test test-rust test-python lint bench clean proto proto-check wheel-check images

$(VENV)/.deps: pyproject.toml Makefile .ci/requirements.py
	$(PYTHON) -m venv $(VENV)
	$(REQUIREMENTS) --build test dev kubernetes postgres > $(VENV)/requirements.txt
	$(PIP_INSTALL) -r $(VENV)/requirements.txt
	touch $@

# One release build serves the demo, the tests and the benchmarks.
build: $(VENV)/.deps
	maturin develop --release --quiet

demo: build
	examples/demo.sh

test-rust:
	cargo test --workspace --exclude dagengine-py

test-python: build
	$(PY) -m pytest

test: test-rust test-python

# The Python gRPC stubs (python/dagengine/v1/) are generated from protos/ and committed.
PROTO_SRC := protos/dagengine/v1/engine.proto
PROTOC = $(PY) -m grpc_tools.protoc -I protos --python_out=$(1) --grpc_python_out=$(1) --pyi_out=$(1) $(PROTO_SRC)

proto: $(VENV)/.deps
	$(call PROTOC,python)

# Fails when the committed stubs are stale (regenerate with `make proto`).
proto-check: $(VENV)/.deps
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(call PROTOC,$$tmp); \
	diff -r -x __init__.py -x __pycache__ "$$tmp/dagengine/v1" python/dagengine/v1 \
		|| { echo "proto-check: python/dagengine/v1 is stale; run 'make proto'" >&2; exit 1; }

lint: proto-check build
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check python tests benches
	ruff format --check python tests benches
	mypy
	$(PY) -m mypy.stubtest dagengine._core --allowlist .stubtest-allowlist

bench: build
	$(REQUIREMENTS) --no-deps bench > $(VENV)/requirements-bench.txt
	$(PIP_INSTALL) -r $(VENV)/requirements-bench.txt
	$(PY) benches/run.py
	$(PY) benches/bench_engine.py
	$(PY) benches/bench_http.py
	$(PY) benches/bench_peers.py

# The release wheel as users get it (CI runs this after `make test`). `maturin build` shares
# `make build`'s cargo release cache (same profile and features): nothing is compiled again.
wheel-check: $(VENV)/.deps
	rm -f $(WHEEL_DIR)/dagengine-*.whl
	maturin build --release --quiet --out $(WHEEL_DIR)
	.ci/wheel-check $(WHEEL_DIR)/dagengine-*.whl

# dagengine:local (DAGENGINE_IMAGE); needs root, debootstrap and a Docker engine.
images: $(VENV)/.deps
	deploy/images/build.sh

clean:
	rm -rf $(VENV) target python/dagengine/*.so
