"""Shared bits of the three DKT pipelines: how a task calls the project's CLIs, and the assets they exchange.

Stdlib and Airflow only: this runs in the Airflow virtualenv. The real work runs in
the app virtualenv (``DKT_APP_PYTHON``), so every task is one CLI call that a
person can repeat by hand. Credentials never appear here: the CLIs read them from
the worker's environment.
"""

from __future__ import annotations

import os
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Asset

REPO = Path(__file__).resolve().parent.parent
APP_PYTHON = os.environ.get("DKT_APP_PYTHON", str(REPO / ".venv" / "bin" / "python"))
TRAIN_QUEUE = os.environ.get("DKT_TRAIN_QUEUE", "train")
EXIT_SKIP = 99  # the CLIs exit 99 for "nothing to do": the task is skipped and emits no asset event

DATA_ASSET = Asset(name="dkt_dataset_latest", uri="file:///dkt/datasets/latest")
MODEL_ASSET = Asset(name="dkt_model_production", uri="file:///dkt/models/production")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dkt",
    "retries": int(os.environ.get("DKT_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("DKT_RETRY_DELAY_SECONDS", "30"))),
    "execution_timeout": timedelta(minutes=30),
}


def cli(task_id: str, command: str, timeout_minutes: int = 30, **kwargs: Any) -> BashOperator:
    """A task that runs ``$DKT_APP_PYTHON <command> --run-id <run id>`` from the repository root."""
    bash = f"set -euo pipefail; exec {shlex.quote(APP_PYTHON)} {command} --run-id '{{{{ run_id }}}}'"
    return BashOperator(
        task_id=task_id,
        bash_command=bash,
        cwd=str(REPO),
        env={"PYTHONUNBUFFERED": "1"},
        append_env=True,
        skip_on_exit_code=EXIT_SKIP,
        execution_timeout=timedelta(minutes=timeout_minutes),
        **kwargs,
    )
