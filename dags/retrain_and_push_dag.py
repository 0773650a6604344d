"""retrain_and_push_dag: a new data set version -> a candidate model, promoted only if it is not worse.

train: pull-data (holds out the newest answers: the latest $DKT_HOLDOUT_FRACTION, newer than what production
trained on), then train (without them, each candidate kind of the param ``candidates`` or $DKT_TRAIN_CANDIDATES,
default lstm,saint, warm-started from production where it fits; the one with the best AUC on those answers goes on,
docs/pipeline.md#model-selection) -> evaluate: evaluate (candidate and production on those answers, each student's
earlier answers as context; the user-split test set when there are fewer than $DKT_GATE_MIN_ANSWERS), then
push-candidate, then promote-if-better (the paired bootstrap 95% interval of production's AUC minus the
candidate's must stay within $DKT_PROMOTE_TOLERANCE; the figures go into the task log and the promotion history,
`dkt models promotions`; emits the model asset when it promotes). docs/pipeline.md#promotion-gates.
Nothing unloadable is promoted: evaluate refuses a candidate that does not load and score a smoke batch,
and promote_if_better pulls the stored version and checks it again (dkt.verify); either fails the task.
Both tasks run on the Airflow queue $DKT_TRAIN_QUEUE (default "train"): they share a work folder and want the GPU
host. With DKT_TRAIN_EXECUTOR=edge they go to the Edge worker there, and promote-if-better is a third task,
promote_if_better, on the scheduler host. Scheduled on the drift asset: update_data_dag emits it when a new data
version drifted past $DKT_DRIFT_PSI_THRESHOLD (docs/monitoring.md#drift); with DKT_DRIFT_PSI_THRESHOLD=0 (retrain on
every new version) on the data asset instead, so that the drift report, written beside it, does not delay it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import Param

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import DATA_ASSET, DRIFT_ASSET, MODEL_ASSET, TRAIN_EXECUTOR, cli, pipeline_dag

from dkt.settings import PipelineSettings, load

# DKT_DRIFT_PSI_THRESHOLD=0: every new data version retrains, so the drift report need not come first: the run
# starts on the data asset (publish) while update_data_dag's drift task writes its report beside it.
EVERY_VERSION = load(PipelineSettings).drift_psi_threshold == 0

with pipeline_dag(
    "retrain_and_push_dag",
    [DATA_ASSET if EVERY_VERSION else DRIFT_ASSET],
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
    # Each task start costs seconds (docs/pipeline.md#the-cycle-new-answers---served): pulling the data goes with
    # training on it, storing the candidate with evaluating it; training stays apart so that a retry of a failed
    # evaluation, push or promotion does not train again. With the Edge executor the promotion is a third task, on
    # the scheduler host; with one host (local) it runs in the evaluate task's process (no task start, no imports).
    train = cli("train", ["-m dkt models pull-data", "-m dkt models train --candidates '{{ params.candidates }}'"],
                timeout_minutes=135, train_host=True)  # fmt: skip
    if TRAIN_EXECUTOR == "edge":
        evaluate = cli("evaluate", ["-m dkt models evaluate", "-m dkt models push-candidate"], timeout_minutes=45,
                       train_host=True)  # fmt: skip
        promote = cli("promote_if_better", "-m dkt models promote-if-better", timeout_minutes=5, outlets=[MODEL_ASSET])
        train >> evaluate >> promote
    else:
        steps = ["-m dkt models evaluate", "-m dkt models push-candidate", "-m dkt models promote-if-better"]
        train >> cli("evaluate_and_promote", steps, timeout_minutes=50, train_host=True, outlets=[MODEL_ASSET])
