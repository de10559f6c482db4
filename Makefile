# gradflow: every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-serial test-all test64 bench figures lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradflow demo

# One worker per core (pytest-xdist), a test file per worker: most of the suite's time is
# single-threaded XLA compilation. `make test-serial` runs in one process.
PYTEST_JOBS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" -n $(PYTEST_JOBS) --dist loadfile

test-serial: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" -n $(PYTEST_JOBS) --dist loadfile

test64: $(STAMP)
	JAX_ENABLE_X64=1 $(PY) -m pytest -q -m "not slow and not gpu" -n $(PYTEST_JOBS) --dist loadfile

bench: $(STAMP)
	$(PY) bench/run.py

figures: $(STAMP)
	@for f in experiments/fig*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) $$f --out paper_figures || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check gradflow tests experiments bench
	$(VENV)/bin/ruff format --check gradflow tests experiments bench

format: $(STAMP)
	$(VENV)/bin/ruff format gradflow tests experiments bench
	$(VENV)/bin/ruff check --fix gradflow tests experiments bench

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
