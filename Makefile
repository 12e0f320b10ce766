# Thin wrapper: the logic lives in Python (services/cli, loadtests/). `make help` lists targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(wildcard protos/stepaudio/serving/v1/*.proto)
STAMP := $(VENV)/.installed

.PHONY: help setup protos demo test test-fast reliability lint typecheck bench bench-gpu load chart-lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	# CPU build of torch from the local disk first, so the project's torch>=2.11 is already met
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "grpcio-tools==1.76.0" "mypy-protobuf>=3.6"
	$(MAKE) protos
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: ## system programs (apt-get as root), then .venv with the project (CPU)
	python3 deploy/system_packages.py
	$(MAKE) --no-print-directory $(STAMP)

build/proto/.stamp: $(PROTO_SRC)
	rm -rf build/proto && mkdir -p build/proto
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos --python_out=build/proto --grpc_python_out=build/proto \
	  --mypy_out=build/proto --mypy_grpc_out=build/proto $(PROTO_SRC)
	touch $@

protos: build/proto/.stamp ## generate gRPC stubs from protos/ into build/proto

demo: setup ## tiny pack (unless STEPAUDIO_MODEL_DIR is set), start the stack, one spoken exchange
	$(VENV)/bin/stepaudio demo --out var/demo

test: setup ## lint, then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) typecheck
	$(PY) -m pytest -q

test-fast: setup ## unit tests only
	$(PY) -m pytest -q -m "not integration and not browser"

typecheck: setup ## mypy (strict for services/common and services/controller)
	$(VENV)/bin/mypy services
reliability: setup ## the fault matrix (process kills, Redis restart, overload) and the fuzzers
	$(PY) -m pytest -q -m "reliability or fuzz"

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup ## CPU benchmarks on the tiny pack (results go to stdout; see docs/benchmarks.md)
	$(PY) -m loadtests.bench

load: setup ## realtime load sweep (ARGS="--url URL --sessions 1,8,32"; see docs/benchmarks.md)
	$(PY) -m loadtests.realtime_load $(ARGS)

bench-gpu: ## GPU benchmarks (run on a GPU host with vLLM installed)
	python3 -m loadtests.gpu.bench

chart-lint: setup ## render and lint the Helm chart; compose and Dockerfile checks
	$(PY) -m pytest -q tests/deploy

clean: ## remove build outputs
	rm -rf build var *.egg-info
