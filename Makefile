# gradflow: every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test64 bench figures lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradflow demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

test64: $(STAMP)
	JAX_ENABLE_X64=1 $(PY) -m pytest -q -m "not slow and not gpu"

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
