# fleetcast: two commands do all set-up on a fresh machine.
#   make test   create .venv, install, ruff + the whole test suite
#   make demo   create .venv, install, run the pipeline on embedded defaults, start the services
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench-data bench-train bench-serve bench-real bench-real-retrain bench-fallbacks bench-dashboard \
        bench-soak bench-alerts calibrate-alerts bench-ingest bench-fleet debian-packages chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from local disk first: a bare torch requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# everything: the service's dependencies plus the pipeline, dashboard and dev extras (pyproject.toml)
	$(BIN)/pip install -q -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# Debian's packages the tests drive as real peers (never a browser or binary download):
#   chromium                  the dashboard's real-browser smoke test
#   prometheus, -alertmanager Alertmanager delivery and Prometheus scrape/remote-write tests
#   prometheus-node-exporter  the real agent behind Prometheus remote write
#   collectd-core, libyajl2   collectd with write_http (its JSON output needs libyajl,
#   libcurl3-gnutls           its HTTP client libcurl-gnutls: collectd-core only suggests both)
#   iproute2                  `ip netns`: the service test with a peer that is not loopback
# Installed only when a command is missing; needs root or sudo.
DEBIAN_PACKAGES := chromium prometheus prometheus-alertmanager prometheus-node-exporter collectd-core libyajl2 \
                   libcurl3-gnutls iproute2
DEBIAN_COMMANDS := /usr/bin/chromium /usr/bin/prometheus /usr/bin/prometheus-alertmanager \
                   /usr/bin/prometheus-node-exporter /usr/sbin/collectd /usr/sbin/ip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

debian-packages:
	@missing=0; for c in $(DEBIAN_COMMANDS); do [ -x "$$c" ] || missing=1; done; \
	ldconfig -p 2>/dev/null | grep -q libyajl.so.2 || missing=1; \
	ldconfig -p 2>/dev/null | grep -q libcurl-gnutls.so.4 || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    $(DEBIAN_PACKAGES) >/dev/null; \
	fi

# kept for the docs and muscle memory: the browser alone is part of debian-packages
chromium: debian-packages

lint: install
	$(BIN)/ruff check .

test: install debian-packages lint
	$(BIN)/pytest

demo: install
	$(BIN)/fleetcast demo

bench-data: install
	$(BIN)/python tests/benchmarks/bench_data.py

bench-train: install
	$(BIN)/python tests/benchmarks/bench_train.py

bench-serve: install
	$(BIN)/python tests/benchmarks/bench_serve.py

# real CloudWatch CPU traces through a `bentoml serve` of the champion vs naive baselines (ARGS="--varying" ...)
bench-real: install
	$(BIN)/python tests/benchmarks/bench_real.py $(ARGS)

# the guard's fallbacks alone on the dev traces (what they were chosen on) and the ec2 test traces
bench-fallbacks: install
	$(BIN)/python tests/benchmarks/bench_fallbacks.py
	$(BIN)/python tests/benchmarks/bench_fallbacks.py --test

bench-dashboard: install
	$(BIN)/python tests/benchmarks/bench_dashboard.py --live

# the alert backtest (issue 10): fleetcast vs predict_linear and a static threshold, held-out fleet + NAB
# CHECKPOINT=path/to/tft.pt: that model (default: the demo preset, trained once and cached)
bench-alerts: install
	$(BIN)/python tests/benchmarks/bench_alerts.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# choose the alert probability cuts on the calibration fleet (never the test fleet): models/alert_calibration.yaml
calibrate-alerts: install
	$(BIN)/python tests/benchmarks/bench_alerts.py --calibrate $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# mixed writes and reads, one kill -9 of the server's group and a restart; MINUTES=10 for the full soak
MINUTES ?= 2
bench-soak: install
	$(BIN)/python tests/benchmarks/bench_soak.py --minutes $(MINUTES)

# feed the real AWS traces' first 70 % to a service, run the feed retraining job (fine-tune the champion
# of `make demo`; PRESET=tiny for a smoke run), score model and served forecasts on the last 30 %
PRESET ?= demo
bench-real-retrain: install
	$(BIN)/python tests/benchmarks/bench_real_retrain.py --preset $(PRESET)

# ingest throughput per format (remote write, OTLP protobuf/JSON, collectd JSON, fleetcast JSON) over loopback
bench-ingest: install
	$(BIN)/python tests/benchmarks/bench_ingest.py

# 100,000 servers on one service (SERVERS=10000 for a quicker run); figures in docs/performance.md
SERVERS ?= 100000
bench-fleet: install
	$(BIN)/python tests/benchmarks/bench_fleet.py --servers $(SERVERS)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
