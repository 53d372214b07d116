# The two set-up commands of the README: `make demo` and `make test`.
# Both build a virtual environment in .venv with a real (non-editable) install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet ".[test]"

# Starts the shipped demo API on 127.0.0.1, runs pipelines/demo.yaml into SQLite, shows rows.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" sh scripts/demo.sh

# Installs the package with its test extras, runs the gates (ruff, mypy --strict as pyproject.toml
# configures them), validates the examples, replays their recorded fixtures offline (`etl test`; recorded
# by scripts/record-fixtures.py), runs the whole suite (pytest's console script does not put
# the source tree on sys.path: the installed package is tested), one worker per core (pytest-xdist).
# Any failure stops with a non-zero exit.
test: install-test
	$(BIN)/ruff check runner tests bench
	$(BIN)/mypy
	$(BIN)/etl validate pipelines/
	for d in tests/fixtures/pipelines/*/; do $(BIN)/etl test pipelines/$$(basename $$d).yaml --fixtures $$d || exit 1; done
	$(BIN)/pytest -q -n auto

clean:
	rm -rf $(VENV) build *.egg-info .etl data
