# Local virtualenv with the pinned stack (requirements-dev.txt); every target installs what it needs.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo bench

$(STAMP): requirements-dev.txt setup.py
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
	$(BIN)/ruff check cald_brain recipes tools tests setup.py
	$(BIN)/ruff format --check cald_brain recipes tools tests setup.py

bench: $(STAMP)
	$(BIN)/python tools/bench_mixers.py

demo: $(STAMP)
	$(BIN)/python tools/demo.py
