# fleetcast: two commands do all set-up on a fresh machine.
#   make test   create .venv, install, ruff + the whole test suite
#   make demo   create .venv, install, run the pipeline on embedded defaults, start the services
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench-data bench-train bench-serve bench-dashboard chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from local disk first: a bare torch requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# everything: the service's dependencies plus the pipeline, dashboard and dev extras (pyproject.toml)
	$(BIN)/pip install -q -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the dashboard's real-browser smoke test (never a browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install
	$(BIN)/ruff check .

test: install chromium lint
	$(BIN)/pytest

demo: install
	$(BIN)/fleetcast demo

bench-data: install
	$(BIN)/python tests/benchmarks/bench_data.py

bench-train: install
	$(BIN)/python tests/benchmarks/bench_train.py

bench-serve: install
	$(BIN)/python tests/benchmarks/bench_serve.py

bench-dashboard: install
	$(BIN)/python tests/benchmarks/bench_dashboard.py --live

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
