# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
PLOTS_PAGE := .dvc/plots/page.html
# dvc runs stage commands through the shell: put the venv first so `python` is ours
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg
# no network beyond the package indexes: MLflow's usage telemetry stays off (the pipeline's
# own processes default to the same; set it to false to send it)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install run test test-fast test-quality test-gpu gpu-wheels gpu-check bench lint format ui tune-ui serve check clean

install: $(STAMP) $(PLOTS_PAGE)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# DVC's plots page with vega, vega-lite and vega-embed inline, from the npm registry (DVC's
# own page loads them from a CDN and draws nothing offline); .dvc/config names it
$(PLOTS_PAGE): pipeline/offline_plots.py | $(STAMP)
	python -m pipeline.offline_plots

# `dvc repro`'s graph with independent stages at once (DVC decides what is stale and writes
# dvc.lock; `dvc repro` itself works as well, one stage at a time)
run: $(STAMP) $(PLOTS_PAGE)
	python -m pipeline run
	@echo
	@echo "Report:    reports/index.html (and reports/index.md)"
	@echo "Metrics:   dvc metrics show    Plots: dvc plots show"
	@echo "MLflow UI: make ui  -> http://127.0.0.1:5000"

check: $(STAMP)
	python -m pipeline check

lint: $(STAMP)
	ruff check .
	ruff format --check .

format: $(STAMP)
	ruff format .
	ruff check --fix .

# the report test opens reports/index.html in Debian's chromium (driven by playwright)
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

# the scale-out tests start their own PostgreSQL server (Debian's package) on loopback
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl) /usr/lib/postgresql/pg_ctl)
$(PG_CTL):
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q postgresql \
	  || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q postgresql; }

# the quality floors train the shipped params in full (about 25 minutes on 2 slow cores):
# `make test-quality` runs them; `make test` leaves them out to stay inside the CI budget
# pytest-xdist: TEST_WORKERS processes, each test file in one of them (a module's server or
# shared project is set up once); each worker and what it starts takes its share of the cores
TEST_WORKERS ?= 2
PYTEST := python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# the slowest tests are listed at the end: where `make test`'s time goes
test: lint $(CHROMIUM) $(PG_CTL) $(PLOTS_PAGE)
	$(PYTEST) -m "not quality" --durations=25

test-fast: $(STAMP) $(PLOTS_PAGE)
	$(PYTEST) -m "not slow"

test-quality: $(STAMP)
	python -m pytest -m quality

# the CUDA tests (tests/gpu; skipped without a GPU)
test-gpu: $(STAMP)
	python -m pytest tests/gpu -m gpu

# the GPU check on a GPU machine (benchmarks/gpu_check.sh; results in reports/gpu_check), and
# the wheels it needs there (Python 3.12, manylinux x86_64) in .whl/ for the machine's `carry`
gpu-check:
	benchmarks/gpu_check.sh

GPU_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)
gpu-wheels: $(STAMP)
	python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(GPU_PLATFORMS) -d .whl -r benchmarks/gpu_wheels.txt
	@du -sh .whl

# side-by-side ratios against a reference in the same run; prints them and writes
# reports/benchmarks/*.json and reports/benchmarks.md (gpu_bench skips without CUDA)
bench: $(STAMP)
	python -m benchmarks.train_bench
	python -m benchmarks.startup_bench
	python -m benchmarks.gpu_bench
	python -m benchmarks.memory_bench
	python -m benchmarks.system_metrics_bench
	python -m benchmarks.data_bench
	python -m benchmarks.tune_bench
	python -m benchmarks.flow_bench
	python -m benchmarks.concurrency_bench
	python -m benchmarks.parallel_bench

ui: $(STAMP)
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# Optuna's dashboard on one experiment's search, read from the journal tune@ keeps (with
# tune.storage set, name the database instead: make tune-ui STUDY=postgresql://...)
EXP ?= cnn_digits
STUDY ?= artifacts/$(EXP)/tuning/study.journal
TUNE_UI_PORT ?= 8080
tune-ui: $(STAMP)
	@echo "Optuna dashboard: http://127.0.0.1:$(TUNE_UI_PORT)  ($(STUDY))"
	optuna-dashboard $(STUDY) --host 127.0.0.1 --port $(TUNE_UI_PORT) --quiet

# Prefect: serve the flows, dl-retrain/retrain on schedule.cron. With PREFECT_API_URL set, use
# that server; otherwise start one on loopback for as long as this runs (its database and
# settings stay in .prefect/, the UI is on the same port).
PREFECT_PORT ?= 4200
serve: $(STAMP)
	@if [ -n "$$PREFECT_API_URL" ]; then exec python -m pipeline serve; fi; \
	export PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false; \
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .prefect-server.log 2>&1 & \
	server=$$!; trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (server log: .prefect-server.log)"; \
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api python -m pipeline serve --wait 60

clean:
	rm -rf .prefect .prefect-server.log data artifacts reports/experiments reports/benchmarks reports/index.* mlflow.db mlartifacts dvc.lock
