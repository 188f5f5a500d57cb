# Everything a developer or CI runs. `make run` and `make test` set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint migrate services services-stop preflight clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

## run: the HTTP server (PORT, default 3000) and the processor, in the foreground
run: $(STAMP) preflight migrate
	scripts/run.sh

## test: the whole suite against the local Redis and PostgreSQL
test: $(STAMP) preflight
	$(BIN)/pytest

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common ingest processor report

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
