"""retrain_and_push_dag: a new data set version -> a candidate model, promoted only if it is not worse.

pull_data (holds out the newest answers: the latest $DKT_HOLDOUT_FRACTION, newer than what production trained
on) -> train (without them) -> evaluate (candidate and production on those answers, each student's earlier
answers as context; the user-split test set when there are fewer than $DKT_GATE_MIN_ANSWERS) -> push_candidate
-> promote_if_better (the paired bootstrap 95% interval of production's AUC minus the candidate's must stay
within $DKT_PROMOTE_TOLERANCE; the figures go into the task log and the promotion history, `dkt models
promotions`; emits the model asset when it promotes). docs/pipeline.md#promotion-gates.
Nothing unloadable is promoted: evaluate refuses a candidate that does not load and score a smoke batch,
and promote_if_better pulls the stored version and checks it again (dkt.verify); either fails the task.
The first four run on the Airflow queue $DKT_TRAIN_QUEUE (default "train"): they share a work folder and
want the GPU host (with DKT_TRAIN_EXECUTOR=edge, the Edge worker there). Scheduled on the drift asset:
update_data_dag emits it when a new data version drifted past $DKT_DRIFT_PSI_THRESHOLD (docs/monitoring.md#drift).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import DRIFT_ASSET, MODEL_ASSET, cli, pipeline_dag

with pipeline_dag("retrain_and_push_dag", [DRIFT_ASSET], __doc__, ["model"]):
    pull = cli("pull_data", "-m dkt models pull-data", timeout_minutes=15, train_host=True)
    train = cli("train", "-m dkt models train", timeout_minutes=120, train_host=True)
    evaluate = cli("evaluate", "-m dkt models evaluate", timeout_minutes=30, train_host=True)
    push = cli("push_candidate", "-m dkt models push-candidate", timeout_minutes=15, train_host=True)
    promote = cli("promote_if_better", "-m dkt models promote-if-better", timeout_minutes=5, outlets=[MODEL_ASSET])
    pull >> train >> evaluate >> push >> promote
