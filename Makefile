# Two commands matter: `make demo` and `make test`. Each sets up what it needs on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
RECBOLE_VERSION := 1.2.1
STAMP := $(VENV)/.installed
# The demo keeps its own state (broker data, tables, keys), so it never touches anything else in .state/.
DEMO_ENV := RECSYS_STATE_DIR=$(CURDIR)/.state/demo

.PHONY: help venv jars demo test lint broker kafka-cluster hdfs stop lock clean dag-run speed-layer serve airflow-ui bench bench-quick bench-soak spark-cluster

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: $(STAMP)  ## create .venv with the pinned dependencies

$(STAMP): requirements.lock pyproject.toml
	@bash infra/check_system.sh
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --python $(PY) requirements.lock
	# recbole is only a carrier of the MovieLens-100K files: no deps, so torch is never pulled in.
	$(UV) pip install --python $(PY) --no-deps recbole==$(RECBOLE_VERSION)
	$(UV) pip install --python $(PY) --no-deps -e .
	@touch $(STAMP)

# Released, pinned jars from Maven Central (infra/maven/<component>/pom.xml) into .jars/ (git-ignored);
# a component whose folder matches its pom is not fetched again. Nothing is downloaded at run time.
jars: venv  ## fetch the pinned Kafka (and other) jars from Maven Central into .jars/ (once)
	$(PY) -m infra.jars fetch

lock:  ## re-resolve requirements.in into requirements.lock
	$(UV) pip compile requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

demo: venv jars  ## start the local stack, load MovieLens-100K into Kafka, show it arrived
	@$(DEMO_ENV) $(PY) -m infra.demo

test: venv jars lint  ## lint (ruff, mypy), then the whole test suite (starts and stops its own broker and Spark)
	$(VENV)/bin/pytest -n 2 --dist loadfile --durations=15

lint: venv  ## ruff (lint and format check), then mypy; fails on any finding
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

broker: venv jars  ## start the local Kafka (one KRaft node) on 127.0.0.1 (default state folder)
	$(PY) -m infra.broker start

kafka-cluster: venv jars  ## start a local three-node Kafka cluster (KRaft, replication 3) on 127.0.0.1
	$(PY) -m infra.broker start --nodes 3

hdfs: venv jars  ## start the local HDFS (one NameNode, one DataNode) on 127.0.0.1:8020 (default state folder)
	$(PY) -m infra.hdfs start

dag-run: venv  ## run the nightly DAG once, now, with real Airflow and Spark (needs `make broker`)
	$(PY) -m infra.airflow run-dag

speed-layer: venv  ## run one speed-layer instance in the foreground (Ctrl-C stops it)
	$(PY) -m speed_layer

serve: venv  ## run the serving layer (HTTP on 127.0.0.1:8000, storefront at /storefront) in the foreground
	$(PY) -m serving

spark-cluster: venv  ## start a local Spark standalone cluster on 127.0.0.1 (then RECSYS_SPARK_MASTER=spark://127.0.0.1:7077)
	$(PY) -m infra.spark_cluster start

airflow-ui: venv  ## start Airflow's UI, scheduler and dag-processor on 127.0.0.1
	$(PY) -m infra.airflow ui

bench: venv jars  ## benchmarks: writes bench/results/latest.json and report.md (tens of minutes)
	$(PY) -m bench.run

bench-quick: venv jars  ## reduced benchmarks, same output files
	$(PY) -m bench.run --quick

bench-soak: venv jars  ## crash soak: kill -9s and broker restarts under a 300k-event stream, then exactly-once checks
	$(PY) -m bench.run --only soak

stop: ## stop everything the demo, `make broker`, `make hdfs`, `make spark-cluster` or `make airflow-ui` started
	@if [ -x $(PY) ]; then \
	  for env in "$(DEMO_ENV)" ""; do \
	    env $$env $(PY) -m infra.processes stop; env $$env $(PY) -m infra.airflow stop; \
	    env $$env $(PY) -m infra.broker stop; env $$env $(PY) -m infra.spark_cluster stop; \
	    env $$env $(PY) -m infra.hdfs stop; \
	  done; fi

clean: stop  ## remove the virtual environment and all local state
	rm -rf $(VENV) .state .pytest_cache .ruff_cache
