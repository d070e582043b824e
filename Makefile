# The README's commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# honcho runs each Procfile line through the shell: put the venv's python first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test scenario lint bench soak clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: Python 3.11 or newer is needed (set PYTHON=python3.11 or similar)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime

## demo: run the partner (:8000) and the offer service (:8001) with reload; Ctrl-C stops both.
## WORKERS=N runs N offer-service workers (without reload); REDIS_URL=redis://... shares their circuit.
WORKERS ?= 1
demo: $(VENV)/.runtime
	@echo "Open the dashboard: http://127.0.0.1:8001/  (then curl 127.0.0.1:8001/offer, or make scenario)"
	WORKERS=$(WORKERS) $(BIN)/honcho start

## test: unit and end-to-end tests against real processes (and a real redis-server)
test: $(VENV)/.dev
	$(BIN)/python -m pytest

## scenario: drive the walkthrough against the running demo, or against its own services
scenario: $(VENV)/.runtime
	$(BIN)/python scenario.py

## lint: ruff and mypy
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: requests/s and latency of /offer against the naive pattern (bench/README.md)
bench: $(VENV)/.dev
	$(BIN)/python bench/run.py

## soak: 60 s of partner faults and a Redis outage under 50 clients (bench/soak.py); SOAK_SECONDS=15 for short
SOAK_SECONDS ?= 60
soak: $(VENV)/.dev
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
