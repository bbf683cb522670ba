# The two quick-start commands: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml scripts/system-deps.sh
	./scripts/system-deps.sh
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pip install --quiet -e '.[plot]'
	$(BIN)/python -m nepi_dist.cli run --plot results/ping-collect-timeline.png examples/ping_collect.py

# The tests not marked serial in parallel processes, then the serial ones alone (pyproject.toml's markers).
TEST_PROCESSES ?= 3
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) -m 'not serial'; parallel=$$?; \
	$(BIN)/python -m pytest -q -m serial; serial=$$?; \
	test $$parallel -eq 0 -a $$serial -eq 0

lint: $(STAMP)
	$(BIN)/ruff check nepi_dist tests examples bench
	$(BIN)/mypy

# The benchmark suite of issue 5 (see bench/README.md); SCALE_NS=100,1000,3000 for a quicker scale run.
# With NEPI_BENCH_SCRIPT=<a Python 3 port of NEPI's test_concurrency> bench.scale times NEPI too.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.hop
	$(BIN)/python -m bench.delay
	$(BIN)/python -m bench.scale --workers 1,2 $(if $(SCALE_NS),--ns $(SCALE_NS))
	$(BIN)/python -m bench.plot
	$(BIN)/python -m bench.abort
	$(BIN)/python -m bench.workers

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
