# `make up` runs the whole product locally; `make test` installs what tests need and runs them.
# Each area adds to the double-colon targets in mk/*.mk (up::, down::) and to SETUP_PARTS / TEST_SETUP_PARTS,
# the independent things `make setup` / `make test-setup` install (make runs a double-colon target's rules one
# after another even with -j, so the parts are plain prerequisites that install side by side).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=
SETUP_PARTS := $(VENV)/.installed
TEST_SETUP_PARTS :=
# `make test-fast`: unit and component tests; no Docker, no browser, no Airflow run, no live server, no real
# training beyond the tiny session bundle. tests/conftest.py adds these markers from the fixtures a test uses.
FAST_TESTS := not slow and not docker and not browser
# Two pytest workers (pytest-xdist): the suites are CPU-bound on one core each; 2 = this project's CI machine.
TEST_WORKERS ?= 2

.PHONY: help setup test-setup test test-fast lint up down bench

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# The virtualenvs are installed by uv (mk/install.py: pip's indexes, find-links and constraints passed on, the same
# resolution; pip where uv cannot be had, with a warning). uv comes from PATH, else pip installs it into the app venv
# first (one wheel, a few CPU-s), and the other venvs' installs wait for it.
UV_PIN := uv==0.13.9
UV ?= $(or $(shell command -v uv 2>/dev/null),$(abspath $(VENV))/bin/uv)
export UV
INSTALL := $(PYTHON) mk/install.py

$(abspath $(VENV))/bin/uv:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(UV_PIN) || echo "warning: pip could not install $(UV_PIN): the venvs are installed by pip" >&2

# pyproject.toml is a prerequisite: a changed entry point or package list reinstalls (the `dkt` command).
# --no-build-isolation: the venv already has setuptools (torch requires it); an isolated build would install it
# again in a temporary env first. Byte-compiling stays (mk/install.py): where PYTHONDONTWRITEBYTECODE is set, as on
# this project's machines, nothing else would ever write the .pyc.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | $(UV)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(INSTALL) $(PY) --check -r requirements.txt -r requirements-dev.txt
	$(INSTALL) $(PY) --no-deps --no-build-isolation -e .
	touch $@

test: ## install what tests need (all parts at once) and run every test, Docker and browser included
	@$(MAKE) --no-print-directory -j4 test-setup
	$(PY) -m ruff check .
	TEST_WORKERS=$(TEST_WORKERS) mk/run-tests.sh $(PY) $(PYTEST_ARGS)

# Bytecode is written while tests run (mk/run-tests.sh says why): `env -u PYTHONDONTWRITEBYTECODE`.
test-fast: setup ## unit and component tests (no Docker, browser, Airflow run or live server)
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -m "$(FAST_TESTS)" -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: setup ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

up:: setup ## set everything up and run the product locally

down:: ## stop everything `make up` started

include $(wildcard mk/*.mk)

# After the includes: every area has added its parts.
setup: $(SETUP_PARTS) ## create the virtualenvs (app, Airflow)

test-setup: $(SETUP_PARTS) $(TEST_SETUP_PARTS) ## install what the tests need (-j installs the parts side by side)
