# The two commands: `make run` (serve the embedded demo) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest clean bench bench-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/relay serve

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Benchmarks (need Debian's wrk and nginx): the full run writes docs/benchmarks.md; the smoke
# run exercises every workload tiny and once, and its numbers mean nothing.
bench: $(STAMP)
	$(BIN)/python bench/run.py --out docs/benchmarks.md

bench-smoke: $(STAMP)
	$(BIN)/python bench/run.py --smoke --out $${TMPDIR:-/tmp}/relay-bench-smoke.md
