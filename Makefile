# The two commands: `make run` (serve the embedded demo) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run test test-under-load lint typecheck pytest clean bench bench-smoke system-packages \
	bench-packages

# System programs the tests drive (Chromium and its WebDriver: neuroglancer's client in a real
# browser; buildah, podman and mmdebstrap: the Docker image built and run without a daemon;
# redis-server, redis-cli and nginx: the fleet's shared tier and its load balancer), and the
# benchmark's load generator and static-file comparator. Installed with apt-get when run as
# root, else one line says what to install.
TEST_PACKAGES := chromium=chromium chromedriver=chromium-driver buildah=buildah podman=podman \
	mmdebstrap=mmdebstrap redis-server=redis-server redis-cli=redis-tools nginx=nginx
BENCH_PACKAGES := wrk=wrk nginx=nginx redis-server=redis-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make run` installs what serving needs; `make test` adds the test extras.
$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/relay serve

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

system-packages:
	@scripts/debian-packages $(TEST_PACKAGES)

bench-packages:
	@scripts/debian-packages $(BENCH_PACKAGES)

pytest: $(STAMP) system-packages
	$(BIN)/pytest -q

test: system-packages lint typecheck pytest

# The whole suite with a CPU hog on every core beside it (stress-ng): it must not need an idle
# machine.
test-under-load: $(STAMP) system-packages lint typecheck
	@scripts/debian-packages stress-ng=stress-ng
	scripts/under-load $(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Benchmarks (need Debian's wrk and nginx): the full run writes docs/benchmarks.md; the smoke
# run exercises every workload tiny and once, and its numbers mean nothing.
bench: $(STAMP) bench-packages
	$(BIN)/python bench/run.py --out docs/benchmarks.md

bench-smoke: $(STAMP) bench-packages
	$(BIN)/python bench/run.py --smoke --out $${TMPDIR:-/tmp}/relay-bench-smoke.md
