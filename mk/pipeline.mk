# The retraining loop (issue 4): Airflow in its own virtualenv, `make up` / `make down`.
AIRFLOW_VENV ?= .venv-airflow

$(AIRFLOW_VENV)/.installed: requirements-airflow.txt | $(UV)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(INSTALL) $(AIRFLOW_VENV)/bin/python --check -r requirements-airflow.txt
	touch $@

.PHONY: airflow-venv pipeline-status cycle-bench

airflow-venv: $(AIRFLOW_VENV)/.installed ## create the Airflow virtualenv (.venv-airflow)

SETUP_PARTS += $(AIRFLOW_VENV)/.installed

up:: $(AIRFLOW_VENV)/.installed
	$(VENV)/bin/dkt stack up

down::
	@if [ -x $(PY) ]; then $(PY) -m dkt stack down; fi

pipeline-status: ## what `make up` started and what it serves
	$(VENV)/bin/dkt stack status

cycle-bench: setup ## time one retraining cycle, new interactions -> new model served
	$(PY) bench/cycle_bench.py
