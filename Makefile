# Everything a developer or CI runs. `make run` and `make test` set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Locust lives in its own virtualenv, never in the service's.
LOADTEST_VENV := .venv-loadtest
LOADTEST_STAMP := $(LOADTEST_VENV)/.installed
LOADTEST_HOST ?= http://127.0.0.1:3000
LOADTEST_USERS ?= 50
LOADTEST_SPAWN_RATE ?= 50
LOADTEST_TIME ?= 30s
LOADTEST_PROCESSES ?= 2

.PHONY: run up test chaos lint migrate services services-stop preflight loadtest bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

$(LOADTEST_STAMP): loadtest/requirements.txt
	test -x $(LOADTEST_VENV)/bin/python || $(PYTHON) -m venv $(LOADTEST_VENV)
	$(LOADTEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LOADTEST_VENV)/bin/pip install --quiet -r loadtest/requirements.txt
	touch $@

## run: the HTTP server (PORT, default 3000) and the processor, in the foreground; where
## Redis or PostgreSQL does not answer and is installed, a private one is started first
run: $(STAMP) up migrate
	scripts/run.sh

# Redis and PostgreSQL answering: private ones started (make services) where none does.
up: $(STAMP)
	@$(BIN)/python -m common.preflight >/dev/null 2>&1 || scripts/services.sh start
	@$(BIN)/python -m common.preflight

## test: the whole suite against the local Redis and PostgreSQL
test: $(STAMP) preflight
	@scripts/install-package.sh chromium
	@scripts/install-package.sh npm
	$(BIN)/pytest

## chaos: only the fault-injection scenarios (also part of `make test`); each asserts exact counts
CHAOS_TESTS := tests/test_processor_faults.py tests/test_poison_flood.py tests/test_atomic_writes.py \
	tests/test_ingest_faults.py tests/test_start_without_postgres.py tests/test_signals.py \
	tests/test_processor_recovery.py
chaos: $(STAMP) preflight
	$(BIN)/pytest $(CHAOS_TESTS)

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common ingest processor report sites

## migrate: create the database if needed and apply sql/ migrations
migrate: $(STAMP)
	$(BIN)/python -m common.migrate

## preflight: check that Redis and PostgreSQL answer, with hints if not
preflight: $(STAMP)
	@$(BIN)/python -m common.preflight

## services: start private Redis and PostgreSQL under .services/ if none is running
services:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

## loadtest: Locust, headless, against a running server (LOADTEST_HOST); fails if any request failed
# LOADTEST_PROCESSES: Locust worker processes (--processes; empty for a single process).
# 2 by default: one gevent process uses at most one core, and with the service on the same
# 2-core box both cores are busy; two workers drove about 10% more requests than one
# process (6 paired 20-25 s runs, noisy: from -10% to +35%).
loadtest: $(LOADTEST_STAMP)
	$(LOADTEST_VENV)/bin/locust -f loadtest/locustfile.py --headless --only-summary \
		--host $(LOADTEST_HOST) --users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_SPAWN_RATE) \
		--run-time $(LOADTEST_TIME) --exit-code-on-error 1 \
		--csv loadtest/reports/loadtest --html loadtest/reports/loadtest.html \
		$(if $(LOADTEST_PROCESSES),--processes $(LOADTEST_PROCESSES))

## bench: every measurement with its same-run reference; table, benchmarks/results/latest.{json,png}
bench: $(STAMP) preflight
	@scripts/install-package.sh wrk
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(LOADTEST_VENV) .pytest_cache .mypy_cache .ruff_cache
