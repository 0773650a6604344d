# `make up` runs the whole product locally; `make test` installs what tests need and runs them.
# Each area adds to the double-colon targets in mk/*.mk (setup::, test-setup::, up::, down::).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: help setup test test-fast lint up down bench

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# pyproject.toml is a prerequisite: a changed entry point or package list reinstalls (the `dkt` command).
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .
	touch $@

setup:: $(VENV)/.installed ## create the app virtualenv

test-setup:: setup

test: test-setup ## install what tests need and run every test (slow ones too)
	$(PY) -m ruff check .
	mk/run-tests.sh $(PY) $(PYTEST_ARGS)

test-fast: setup ## fast tests only
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

up:: setup ## set everything up and run the product locally

down:: ## stop everything `make up` started

include $(wildcard mk/*.mk)
