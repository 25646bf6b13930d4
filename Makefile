# One task file for people and CI. `make demo` and `make test` do all set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench sandbox readme console clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Runs the whole lifecycle against a sandbox on loopback; leaves data/optin.db.
demo: $(STAMP)
	$(BIN)/optin demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_transition.py

sandbox: $(STAMP)
	$(BIN)/optin sandbox

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis tests/artifacts

# Regenerate the README's lifecycle table and diagram from optin/lifecycle.py.
readme: $(STAMP)
	$(BIN)/optin diagram --write-readme README.md

# Serve the analyst console notebook as a web page on loopback.
console: $(STAMP)
	$(BIN)/voila --Voila.ip=127.0.0.1 --port=8866 --no-browser notebooks/analyst_console.ipynb
