# Local virtualenv with the pinned stack (requirements-dev.txt); every target installs what it needs.
# Python: the first of python3.11, python3.12, python3.13 found, else python3 if it is 3.11 or newer;
# `make PY=/path/to/python` picks one explicitly.
SUPPORTED := python3.11 python3.12 python3.13
PY ?= $(or $(firstword $(foreach p,$(SUPPORTED),$(shell command -v $(p) 2>/dev/null))),$(shell python3 -c 'import sys; print("python3" if sys.version_info >= (3, 11) else "")' 2>/dev/null))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo bench

$(STAMP): requirements-dev.txt setup.py
	@test -x $(BIN)/python || test -n "$(PY)" || { echo "ERROR: no Python 3.11 or newer found (tried $(SUPPORTED) and python3); install one, or run make PY=/path/to/python3.X" >&2; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check cald_brain recipes nlp lm tools tests setup.py
	$(BIN)/ruff format --check cald_brain recipes nlp lm tools tests setup.py

bench: $(STAMP)
	$(BIN)/python tools/bench_mixers.py

demo: $(STAMP)
	$(BIN)/python tools/demo.py
