# Two commands: `make install`, then `make test` (or `make demo`). Nothing needs an active venv.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALL_STAMP := $(VENV)/.install-stamp
EXTRAS := postgres,mysql,render,train,examples,dev
PYTEST_ARGS ?=
# test processes: most end-to-end tests wait on real processes; two share 2 cores (three
# were no faster from a fresh clone: 1,463 tests in 1,070 s of pytest with three)
PYTEST_WORKERS ?= 2
BENCH_ARGS ?=
# Python writes each module's bytecode on first import (the default, which an environment
# may turn off): every `pilot` process the tests and the demo start then loads it instead of
# compiling httpx, pydantic, FastAPI and SQLAlchemy again (`pilot --help` 1.9 s -> 0.8 s)
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help install test demo lint bench bench-executor bench-render bench-train bench-farm addon clean distclean

help:
	@echo "make install   create $(VENV) and install the project with [$(EXTRAS)]"
	@echo "make test      install, then system packages, the test suite and ruff"
	@echo "make demo      install, then render a sample animation on two local workers (demo-output/sample.mp4)"
	@echo "make lint      ruff and mypy"
	@echo "make bench     dispatch vs Ray, Dask, Celery, a process pool (bench/dispatch.py; BENCH_ARGS=--queue)"
	@echo "make bench-executor  Executor.map vs ProcessPoolExecutor and Dask (bench/executor.py)"
	@echo "make bench-render    frames per second with 1 and 2 workers (bench/render.py)"
	@echo "make bench-train  DiLoCo vs one worker, sync data parallel, FedAvg (bench/train.py)"
	@echo "make bench-farm   makespan vs the lower bound on a simulated farm of 30 (bench/farm.py)"
	@echo "make addon     the Blender add-on's installable zip in dist/ (pilot addon build)"
	@echo "make clean     remove caches and build output; distclean also removes $(VENV)"

install: $(INSTALL_STAMP)

# Re-runs only when pyproject.toml is newer than the stamp (or the venv is gone). --no-compile:
# modules are compiled when first imported (only what runs; torch and bpy alone 54 s -> 21 s).
$(INSTALL_STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[$(EXTRAS)]'
	@touch $@

test: install
	@# Without root a missing package fails only under CI; locally its tests skip with a reason.
	scripts/install-system-deps.sh || [ "$${CI:-}" != true ]
	$(BIN)/ruff check parallel_pilot tests bench examples
	$(BIN)/mypy parallel_pilot
	$(BIN)/python -m pytest tests -q -rs -p no:cacheprovider --timeout=600 --durations=10 \
	    -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: install
	$(BIN)/pilot demo

lint: install
	$(BIN)/ruff check parallel_pilot tests bench examples
	$(BIN)/mypy parallel_pilot

# The peers (Ray, Dask, Celery, redis-py) are the [bench] extra, installed only here.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(INSTALL_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

bench: install $(BENCH_STAMP)
	@# Without redis-server (and no root to install it) the Celery arm says so; the rest runs.
	scripts/install-bench-deps.sh || true
	$(BIN)/python bench/dispatch.py $(BENCH_ARGS)

bench-executor: install
	$(BIN)/python bench/executor.py $(BENCH_ARGS)

bench-render: install
	$(BIN)/python bench/render.py $(BENCH_ARGS)

bench-train: install
	$(BIN)/python bench/train.py $(BENCH_ARGS)

bench-farm: install
	$(BIN)/python bench/farm.py $(BENCH_ARGS)

addon: install
	$(BIN)/pilot addon build --out dist

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-output test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
