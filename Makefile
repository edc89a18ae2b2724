# The two commands: `make serve` and `make test`. Each builds what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench build clean

$(STAMP): pyproject.toml setup.py $(wildcard iothub/core/*.pyx)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

build: $(STAMP)

serve: $(STAMP)
	$(BIN)/iothub serve

# Lint and types first (seconds), then every tier of tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# Micro-benchmarks, then the fleet benchmark: persistence on (iothub, SQLite) against off
# (iothub:memory) in five alternating rounds, and against the plain baseline (about ten minutes).
bench: $(STAMP)
	$(BIN)/pytest bench --benchmark-only --benchmark-min-time=0.0005 --benchmark-columns=min,median,mean,ops
	$(BIN)/iothub bench --scenario burst --server iothub --server iothub:memory --rounds 5
	$(BIN)/iothub bench --scenario burst --server iothub --server baseline --rounds 3
	$(BIN)/iothub bench --scenario fleet --server iothub --server iothub:memory --server baseline

clean:
	rm -rf $(VENV) build *.egg-info iothub/core/*.so iothub/core/*.c
