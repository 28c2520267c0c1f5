# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home
PORT ?= 3000
MLFLOW_PORT ?= 5000
# pytest-xdist workers for `make test` (each takes up to ~2.5 GB). 3 on the 2-core reference
# machine: the cluster tests spend most of their time waiting on servers and daemons.
TEST_WORKERS ?= 3

.PHONY: demo test fmt docs ui mlflow-ui search-ui bench clean-demo install \
	stack-up stack-down cluster-demo test-cluster-demo

install: $(STAMP)

# The cluster deployment on this machine (docs/scaling.md): PostgreSQL, Redis, SeaweedFS,
# MLflow, the Dagster webserver and daemon, and Celery workers, all on 127.0.0.1, all
# under .stack/ (servers from Debian: apt-get install postgresql redis-server).
STACK_WORKERS ?= 2
stack-up: $(STAMP)
	mkdir -p .stack
	$(BIN)/rar stack up --folder .stack --workers $(STACK_WORKERS) --port $(PORT) \
		> .stack/stack.log 2>&1 &
	until test -f .stack/pid; do sleep 2; \
		if grep -q "rar: error" .stack/stack.log; then cat .stack/stack.log; exit 1; fi; done
	cat .stack/stack.log

# `rar stack up` stops every server it started on SIGTERM, then removes its pid file
stack-down:
	test -f .stack/pid && kill -TERM $$(cat .stack/pid) || true
	while test -f .stack/pid; do sleep 1; done
	rm -rf .stack

# The demo on a throwaway stack of its own: the same ablation table as `make demo`.
cluster-demo: $(STAMP)
	$(BIN)/rar stack demo --workers $(STACK_WORKERS)

# `rar stack demo` against `rar demo`, at the tests' tiny size (~5 min; not in `make test`)
test-cluster-demo: $(STAMP)
	RAR_TEST_CLUSTER_DEMO=1 $(BIN)/python -m pytest tests/stack/test_cluster_demo.py

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rar demo

test: $(STAMP)
	$(BIN)/ruff check rar_pipeline tests benchmarks
	$(BIN)/ruff format --check rar_pipeline tests benchmarks
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# docs/configuration.md is generated from the settings' fields (a test checks it is current)
docs: $(STAMP)
	$(BIN)/python -m rar_pipeline.core.settings > docs/configuration.md

fmt: $(STAMP)
	$(BIN)/ruff check --fix rar_pipeline tests benchmarks
	$(BIN)/ruff format rar_pipeline tests benchmarks

# The Dagster UI on 127.0.0.1 only.
ui: $(STAMP)
	$(BIN)/dagster dev -h 127.0.0.1 -p $(PORT) -w workspace.yaml

# The search page on 127.0.0.1 (after make demo, or rar run --data DIR with RAR_DATA_ROOT).
SEARCH_PORT ?= 8765
search-ui: $(STAMP)
	$(BIN)/rar serve --port $(SEARCH_PORT)

# one worker process: a local UI for one person (MLflow's default starts 4)
mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db

bench:
	bash benchmarks/fresh_clone_demo.sh

clean-demo:
	rm -rf data/demo data/demo_truth artifacts/demo
