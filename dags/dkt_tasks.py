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
# Where the train-host tasks run. "local" (default): the scheduler host's default executor, like every
# other task. "edge": the Edge executor, i.e. the `airflow edge worker --queues $DKT_TRAIN_QUEUE` that
# init_for_train_server.sh starts on the GPU host; the scheduler must list it in [core] executor
# (`make up` / init_for_inference_server.sh do with the same variable).
TRAIN_EXECUTOR = os.environ.get("DKT_TRAIN_EXECUTOR", "local")
_EXECUTORS = {"local": None, "edge": "EdgeExecutor"}
if TRAIN_EXECUTOR not in _EXECUTORS:
    raise ValueError(f"DKT_TRAIN_EXECUTOR={TRAIN_EXECUTOR!r}: expected one of {sorted(_EXECUTORS)}")
EXIT_SKIP = 99  # the CLIs exit 99 for "nothing to do": the task is skipped and emits no asset event

DATA_ASSET = Asset(name="dkt_dataset_latest", uri="file:///dkt/datasets/latest")
MODEL_ASSET = Asset(name="dkt_model_production", uri="file:///dkt/models/production")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dkt",
    "retries": int(os.environ.get("DKT_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("DKT_RETRY_DELAY_SECONDS", "30"))),
    "execution_timeout": timedelta(minutes=30),
}


def cli(task_id: str, command: str, timeout_minutes: int = 30, train_host: bool = False, **kwargs: Any) -> BashOperator:
    """A task that runs ``$DKT_APP_PYTHON <command> --run-id <run id>`` from the repository root.

    ``train_host``: a GPU task, on queue ``$DKT_TRAIN_QUEUE`` and, with ``DKT_TRAIN_EXECUTOR=edge``,
    sent to the Edge executor (the worker on the train host serves only that queue)."""
    if train_host:
        executor = _EXECUTORS[TRAIN_EXECUTOR]
        kwargs = {"queue": TRAIN_QUEUE, **({"executor": executor} if executor else {}), **kwargs}
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
