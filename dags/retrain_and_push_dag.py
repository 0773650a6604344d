"""retrain_and_push_dag: a new data set version -> a candidate model, promoted only if it is not worse.

train: pull-data (holds out the newest answers: the latest $DKT_HOLDOUT_FRACTION, newer than what production
trained on), then train (without them, each candidate kind of the param ``candidates`` or $DKT_TRAIN_CANDIDATES,
default lstm,saint, warm-started from production where it fits; the one with the best AUC on those answers goes on,
docs/pipeline.md#model-selection) -> evaluate: evaluate (candidate and production on those answers, each student's
earlier answers as context; the user-split test set when there are fewer than $DKT_GATE_MIN_ANSWERS), then
push-candidate -> promote_if_better (the paired bootstrap 95% interval of production's AUC minus the
candidate's must stay within $DKT_PROMOTE_TOLERANCE; the figures go into the task log and the promotion history,
`dkt models promotions`; emits the model asset when it promotes). docs/pipeline.md#promotion-gates.
Nothing unloadable is promoted: evaluate refuses a candidate that does not load and score a smoke batch,
and promote_if_better pulls the stored version and checks it again (dkt.verify); either fails the task.
The first two run on the Airflow queue $DKT_TRAIN_QUEUE (default "train"): they share a work folder and
want the GPU host (with DKT_TRAIN_EXECUTOR=edge, the Edge worker there). Scheduled on the drift asset:
update_data_dag emits it when a new data version drifted past $DKT_DRIFT_PSI_THRESHOLD (docs/monitoring.md#drift).
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import Param

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import DRIFT_ASSET, MODEL_ASSET, cli, pipeline_dag

with pipeline_dag(
    "retrain_and_push_dag",
    [DRIFT_ASSET],
    __doc__,
    ["model"],
    params={
        "candidates": Param(
            "",
            type="string",
            # Only names and paths: the value goes into the task's command line.
            pattern=r"^[A-Za-z0-9_.,/-]*$",
            description="Model kinds to train and choose from, comma-separated (e.g. lstm,saint); empty:"
            " $DKT_TRAIN_CANDIDATES.",
        )
    },
):
    # Three tasks, not five: pulling the data goes with training it, storing the candidate with evaluating it (each
    # task start costs seconds: docs/pipeline.md#the-cycle-new-answers---served); training stays apart so that a
    # retry of a failed evaluation or push does not train again, and the promotion runs on the scheduler host.
    train = cli("train", ["-m dkt models pull-data", "-m dkt models train --candidates '{{ params.candidates }}'"],
                timeout_minutes=135, train_host=True)  # fmt: skip
    evaluate = cli("evaluate", ["-m dkt models evaluate", "-m dkt models push-candidate"], timeout_minutes=45,
                   train_host=True)  # fmt: skip
    promote = cli("promote_if_better", "-m dkt models promote-if-better", timeout_minutes=5, outlets=[MODEL_ASSET])
    train >> evaluate >> promote
