# `make demo` and `make test` create or refresh .venv on demand, then run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench services services-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.orders

# Tests of the PostgreSQL and Kafka backends run when those servers are up (`make services`)
# and are skipped otherwise - except under CI=true, where a missing server fails them.
test: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	for svc in postgres kafka jaeger; do \
	  if scripts/services status $$svc >/dev/null 2>&1; then \
	    eval "$$(scripts/services env | grep -i "_$$svc")"; \
	  fi; \
	done; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench broker

services:
	scripts/services start

services-stop:
	scripts/services stop

clean:
	rm -rf $(VENV) .tidings .pytest_cache .mypy_cache .ruff_cache
