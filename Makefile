# The two commands: `make serve` and `make test`. Each builds what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-image bench build vendor clean

$(STAMP): pyproject.toml setup.py $(wildcard iothub/*/*.pyx)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

build: $(STAMP)

# ARGS: flags for the server, e.g. make serve ARGS="--workers 2"
serve: $(STAMP)
	$(BIN)/iothub serve $(ARGS)

# Lint and types first (seconds), then every tier of tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# The container image, built with podman FROM a Debian base made by mmdebstrap, its entry
# command started in its own filesystem and driven by a Socket.IO client; with compose.yaml's
# checks. Needs root, podman and mmdebstrap; a few minutes. podman's storage is build/container.
test-image: $(STAMP)
	IOTHUB_TEST_IMAGE=1 $(BIN)/pytest tests/container

# Micro-benchmarks, then the fleet benchmark: persistence on (iothub, SQLite) against off
# (iothub:memory) in five alternating rounds, and against the plain baseline; then one process against
# two gateways on Ray, loaded and lightly loaded, and saturated on a CPU budget each (a cgroup: root, or a
# delegated cgroup v2 subtree) (about twenty minutes).
bench: $(STAMP)
	$(BIN)/pytest bench --benchmark-only --benchmark-min-time=0.0005 --benchmark-columns=min,median,mean,ops
	$(BIN)/iothub bench --scenario burst --server iothub --server iothub:memory --rounds 5
	$(BIN)/iothub bench --scenario burst --server iothub --server baseline --rounds 3
	$(BIN)/iothub bench --scenario fleet --server iothub --server iothub:memory --server baseline
	$(BIN)/iothub bench cluster --workers 1 --workers 2 --rate 6000 --duration 15 --load-workers 2
	$(BIN)/iothub bench cluster --workers 1 --workers 2 --rate 2000 --duration 15
	$(BIN)/iothub bench cluster --workers 1 --workers 2 --cpu-budget 0.3 --window 2 --duration 20 --load-workers 2

# The dashboard page's browser libraries (socket.io-client, Leaflet, uPlot) from npm, at the
# versions pinned in scripts/vendor.sh, into iothub/http/static/vendor/ with their licences.
vendor:
	scripts/vendor.sh

clean:
	rm -rf $(VENV) build *.egg-info iothub/core/*.so iothub/core/*.c
