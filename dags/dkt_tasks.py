"""Shared bits of the three DKT pipelines: how a task calls the project's CLIs, and the assets they exchange.

Stdlib, Airflow and dkt/settings.py (self-contained: pydantic-settings, pinned in requirements-airflow.txt)
only: this runs in the Airflow virtualenv. The real work runs in
the app virtualenv (``DKT_APP_PYTHON``), so every task is one CLI call that a
person can repeat by hand. Credentials never appear here: the CLIs read them from
the worker's environment.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset

REPO = Path(__file__).resolve().parent.parent
# Appended, not prepended: the repository's top-level folders must not shadow the Airflow venv's packages.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
from dkt.cli import EXIT_SKIP  # noqa: E402  (needs the path above; the CLIs' "nothing to do": task skipped)
from dkt.settings import AirflowSettings, load  # noqa: E402  (needs the path above)

# A bad value fails the DAG import with one line naming the variable (Airflow lists it as an import error).
SETTINGS = load(AirflowSettings)
APP_PYTHON = str(SETTINGS.app_python)
TRAIN_QUEUE = SETTINGS.train_queue
# Where the train-host tasks run. "local" (default): the scheduler host's default executor, like every
# other task. "edge": the Edge executor, i.e. the `airflow edge worker --queues $DKT_TRAIN_QUEUE` that
# init_for_train_server.sh starts on the GPU host; the scheduler must list it in [core] executor
# (`make up` / init_for_inference_server.sh do with the same variable).
TRAIN_EXECUTOR = SETTINGS.train_executor
_EXECUTORS = {"local": None, "edge": "EdgeExecutor"}
DKT = "-m dkt "  # the project CLI; a task of several steps runs them with `dkt steps`

DATA_ASSET = Asset(name="dkt_dataset_latest", uri="file:///dkt/datasets/latest")
# Emitted by update_data_dag's drift task only when the new version calls for retraining (its PSI against
# production's training data reaches DKT_DRIFT_PSI_THRESHOLD, or there is no production model): what
# retrain_and_push_dag is scheduled on. The data asset still marks every new version.
DRIFT_ASSET = Asset(name="dkt_dataset_drifted", uri="file:///dkt/datasets/drifted")
MODEL_ASSET = Asset(name="dkt_model_production", uri="file:///dkt/models/production")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dkt",
    "retries": SETTINGS.task_retries,
    "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds),
    "execution_timeout": timedelta(minutes=30),
}


def pipeline_dag(dag_id: str, schedule: Any, doc_md: str | None, tags: list[str], **kwargs: Any) -> DAG:
    """One of the three pipelines: no catch-up and one run at a time (each run moves a store pointer)."""
    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["dkt", *tags],
        doc_md=doc_md,
        **kwargs,
    )


def cli(
    task_id: str, command: str | list[str], timeout_minutes: int = 30, train_host: bool = False, **kwargs: Any
) -> BashOperator:
    """A task that runs ``$DKT_APP_PYTHON <command> --run-id <run id>`` from the repository root. A list of
    ``-m dkt`` commands runs them in order in one process, ``dkt steps`` (pipeline/steps.py): each step is still the
    command a person repeats by hand, with its output, error line and figures; the first that fails or skips ends the
    task with its exit code; the interpreter and libraries load once (1-1.5 CPU-s a step). One task for steps that
    always run together: each task costs its start (the scheduler's pick-up, Airflow's task runner, an Edge worker's
    poll) and a retry of the task repeats only cheap steps.

    ``train_host``: a GPU task, on queue ``$DKT_TRAIN_QUEUE`` and, with ``DKT_TRAIN_EXECUTOR=edge``,
    sent to the Edge executor (the worker on the train host serves only that queue)."""
    if train_host:
        executor = _EXECUTORS[TRAIN_EXECUTOR]
        kwargs = {"queue": TRAIN_QUEUE, **({"executor": executor} if executor else {}), **kwargs}
    run_id = "--run-id '{{ run_id }}'"
    if isinstance(command, str):
        call = f"{command} {run_id}"
    else:  # each step one argument, split again by dkt steps (the DAG params in them are names and numbers only)
        if bad := [c for c in command if not c.startswith(DKT)]:
            raise ValueError(f"task {task_id}: steps run in one process must be {DKT}... commands, not {bad}")
        call = f"{DKT}steps {run_id} " + " ".join(shlex.quote(c.removeprefix(DKT)) for c in command)
    return BashOperator(
        task_id=task_id,
        bash_command=f"exec {shlex.quote(APP_PYTHON)} {call}",
        cwd=str(REPO),
        env={"PYTHONUNBUFFERED": "1"},
        append_env=True,
        skip_on_exit_code=EXIT_SKIP,
        execution_timeout=timedelta(minutes=timeout_minutes),
        **kwargs,
    )
