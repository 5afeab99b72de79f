# The one command surface for developers, the README and CI.
#   make demo   build (release) and run the example workflow on the embedded default
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

PY_DEPS := "maturin>=1.7,<2" "PyYAML>=6" "rich>=13" "pytest>=8" "pytest-timeout>=2.3" \
	"hypothesis>=6.100" "ruff>=0.6" "mypy>=1.11" types-PyYAML
BENCH_DEPS := "dask>=2024.1" "networkx>=3" "rustworkx>=0.15" "lupa>=2"

.PHONY: demo build test test-rust test-python lint bench clean

$(VENV)/.deps: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(PY_DEPS)
	touch $@

# One release build serves the demo, the tests and the benchmarks.
build: $(VENV)/.deps
	maturin develop --release --quiet

demo: build
	dagengine run examples/pipeline.yaml --input factor=3

test-rust:
	cargo test --workspace --exclude dagengine-py

test-python: build
	$(PY) -m pytest

test: test-rust test-python

lint: build
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check python tests benches
	ruff format --check python tests benches
	mypy
	$(PY) -m mypy.stubtest dagengine._core --allowlist .stubtest-allowlist

bench: build
	$(PY) -m pip install -q --disable-pip-version-check $(BENCH_DEPS)
	$(PY) benches/run.py

clean:
	rm -rf $(VENV) target python/dagengine/*.so
