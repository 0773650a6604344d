# MLflow tracking (docs/tracking.md): `make up` starts the tracking server every training reports to; the
# server runs from a virtualenv of its own (the full `mlflow` package conflicts with the app's gunicorn; the
# app venv has only the client, mlflow-skinny, from requirements.txt). `make down` stops it.
MLFLOW_VENV ?= .venv-mlflow
# 3.17.2 is the newest server that installs here (3.18.0's mlflow-skinny release is missing); the same
# version as the client in requirements.txt. boto3: artifacts in S3 when DKT_STORE=s3.
MLFLOW_PINS := mlflow==3.17.2 boto3==1.44.5

.PHONY: mlflow-venv mlflow-status

$(MLFLOW_VENV)/.installed: mk/mlflow.mk | $(UV)
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(INSTALL) $(MLFLOW_VENV)/bin/python --check $(MLFLOW_PINS)
	touch $@

mlflow-venv: $(MLFLOW_VENV)/.installed ## create the MLflow tracking server's virtualenv (.venv-mlflow)

# `make up` needs the server, the tests start a real one (tests/dkt/test_tracking.py).
SETUP_PARTS += $(MLFLOW_VENV)/.installed

# The trainings `make up` runs (its first model, the retrain DAG through Airflow, which inherits this
# environment) report to this server; an explicit DKT_MLFLOW_TRACKING_URI wins, empty turns tracking off.
# Asked once, when a recipe of `up` first needs it: the address follows the settings (DKT_MLFLOW_PORT).
MLFLOW_URI = $(eval MLFLOW_URI := $(shell $(PY) -m pipeline.mlflow_server uri))$(MLFLOW_URI)
up: export DKT_MLFLOW_TRACKING_URI ?= $(MLFLOW_URI)

up:: $(MLFLOW_VENV)/.installed
	@$(PY) -m pipeline.mlflow_server up

down::
	@if [ -x $(PY) ]; then $(PY) -m pipeline.mlflow_server down; fi

mlflow-status: ## whether `make up`'s MLflow tracking server runs, and where
	@$(PY) -m pipeline.mlflow_server status
