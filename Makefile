# The README's commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# honcho runs each Procfile line through the shell: put the venv's python first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test test-long test-versions stress scenario lint bench soak clean

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

## test: every behaviour, unit and end to end against real processes and a real redis-server
## (measured times in docs/tests.md)
## Four workers on two cores, each taking the next test as it frees up (with a file each, one long
## file held the run): the tests mostly wait on the processes they start, so two workers left the
## CPU idle half the time. TEST_WORKERS=N for another count.
test: $(VENV)/.dev
	$(call pytest_run,-m "not long",$(TEST_WORKERS))

## test-long: what only long runs show: the chaos soak, the benchmark's smoke run, the full-size fleet model;
## two workers, since these few tests keep the CPU busy themselves
test-long: $(VENV)/.dev
	$(call pytest_run,-m long,2)

TEST_WORKERS ?= 4
# pytest exits 5 when it collected nothing (a marker or a path gone wrong): a failure, said so.
pytest_run = $(BIN)/python -m pytest -n $(2) --dist worksteal $(1) \
	|| { status=$$?; [ $$status -ne 5 ] || echo 'error: pytest collected no tests ($(1))' >&2; exit $$status; }

## test-versions: the breaker, shared-state and end-to-end tests on every other Python the README
## promises, each in its own .venv-X.Y (python3.X from PATH, else pyenv's latest 3.X)
PYTHONS ?= 3.12 3.13
VERSION_TESTS ?= tests/test_circuit_breaker.py tests/test_redis_state.py tests/test_fleet_state.py \
	tests/test_end_to_end.py
python_for = $(shell python$(1) -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| PYENV_VERSION=$$(pyenv latest $(1) 2>/dev/null) python$(1) -c 'import sys; print(sys.executable)' 2>/dev/null)

.venv-%/bin/python:
	@test -n "$(call python_for,$*)" || { echo "error: no Python $* found (pyenv install $*, or put python$* on PATH)"; exit 1; }
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip

.venv-%/.dev: requirements.txt requirements-dev.txt | .venv-%/bin/python
	.venv-$*/bin/python -m pip install --quiet -r requirements-dev.txt
	@touch $@

# Both named, so that make neither deletes nor skips the interpreter as an intermediate file.
test-versions: $(foreach v,$(PYTHONS),.venv-$(v)/bin/python .venv-$(v)/.dev)
	@status=0; for v in $(PYTHONS); do \
		echo "== Python $$v: $(VERSION_TESTS)"; \
		.venv-$$v/bin/python -m pytest $(VERSION_TESTS) || status=1; \
	done; exit $$status

## stress: the breaker, shared-state and fleet tests RUNS times (20) beside two CPU-burning processes
RUNS ?= 20
STRESS_TESTS ?= tests/test_circuit_breaker.py tests/test_redis_state.py tests/test_fleet_state.py tests/test_fleet.py \
	tests/test_rate_policy.py
stress: $(VENV)/.dev
	$(BIN)/python tests/stress.py --runs $(RUNS) $(STRESS_TESTS)

## scenario: drive the walkthrough against the running demo (or its own services), then the partial failures
scenario: $(VENV)/.runtime
	$(BIN)/python tools/scenario.py

## lint: ruff and mypy
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: CPU per request, requests/s and latency of /offer against the naive pattern and the ceilings,
## in interleaved rounds, with medians and ranges (tools/bench/README.md); BENCH_ARGS="--rounds 7" and so on
BENCH_ARGS ?=
bench: $(VENV)/.dev
	$(BIN)/python tools/bench/run.py $(BENCH_ARGS)

## soak: 60 s of partner faults and a Redis outage under 50 clients (tools/bench/soak.py); SOAK_SECONDS=15 for short
SOAK_SECONDS ?= 60
soak: $(VENV)/.dev
	$(BIN)/python tools/bench/soak.py --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache mutants

## mutation: mutmut's score for circuit_breaker.py and the shared state (service/redis_state.py and its parts), each mutant against the tests
## that reach it ([tool.mutmut] in pyproject.toml); MUTANTS='circuit_breaker.*' narrows it (passed to mutmut unexpanded), CHILDREN=N runs N at once
.PHONY: mutation
CHILDREN ?= 2
mutation: $(VENV)/.dev
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(CHILDREN) $(if $(MUTANTS),'$(MUTANTS)')
	@$(BIN)/mutmut results

## screenshot: docs/dashboard.png (1366 px, the circuit open), docs/dashboard-phone.png and docs/dashboard-rate.png,
## taken by the dashboard's tests in Chromium while they drive the page
.PHONY: screenshot
screenshot: $(VENV)/.dev
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/dashboard.png $(BIN)/python -m pytest tests/test_dashboard.py -q

## fleet-sim: N = 10, 100, 300, 1000 instances of the breaker against a real Redis and a Cluster:
## trip propagation, one trial, Redis's load (docs/fleet-scale.md); FLEET_ARGS="--sizes 10 100" and so on
FLEET_ARGS ?=
.PHONY: fleet-sim
fleet-sim: $(VENV)/.dev
	$(BIN)/python tools/fleet_sim.py $(FLEET_ARGS)
