# Two entry points (see README): `make pipeline` and `make test`. Both set up the virtual environment first.
# TORCH_SPEC picks the torch build: the default is the CPU wheel; CUDA users pass e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist: TEST_WORKERS processes share the tests (0 = one process, no xdist), a whole test file at a time
# (loadfile), so a module-scoped fixture (a tiny pipeline run, live servers) is built once; --no-loadscope-reorder
# keeps collection order, which tests/conftest.py sets: the slowest files first (SLOWEST_FILES_FIRST), the short
# unit files fill in at the end.
# (Not loadgroup: with pytest 9.2, xdist 3.8 ignores xdist_group marks, pytest-dev/pytest-xdist#1386.)
TEST_WORKERS ?= 2
XDIST_ARGS := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: setup pipeline test test-fast lint typecheck bench clean-outputs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job: the full pipeline flow on the embedded default (synthetic data, tiny model, local services).
pipeline: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/anomaly-ov run

## The whole test suite (unit + integration with the real Prefect server, MLflow store and DVC).
test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(XDIST_ARGS) $(PYTEST_ARGS)

## Unit tests only.
test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(XDIST_ARGS) -m "not integration and not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

## mypy over anomaly_ov, tasks and flows (settings in pyproject.toml's [tool.mypy]).
typecheck: setup
	$(BIN)/mypy

bench: setup
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

## Remove pipeline outputs (data, models, reports, MLflow store) to start from scratch.
clean-outputs:
	rm -rf data models reports mlruns mlflow.db dvc.lock
