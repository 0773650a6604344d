"""update_data_dag: new interactions from the client database -> a new data set version.

publish: export (since the watermark), then prepare (validate, merge, dedupe), then publish (push, move latest;
emits the data asset) -> advance_watermark (only after the push). Schedule: $DKT_UPDATE_SCHEDULE
(default @daily). Re-running after a crash at any step neither loses nor duplicates rows.
Beside advance_watermark, drift writes the new version's drift report against production's training
data (datasets/<version>/drift.json, and the task log) and emits the drift asset, which starts
retrain_and_push_dag, only when its PSI reaches $DKT_DRIFT_PSI_THRESHOLD (else it is skipped). With the threshold
0 (retrain on every new version) retrain_and_push_dag starts on the data asset and drift runs beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import DATA_ASSET, DRIFT_ASSET, SETTINGS, cli, pipeline_dag

with pipeline_dag("update_data_dag", SETTINGS.update_schedule, __doc__, ["data"]):
    # One task, one process (dkt steps) for export, prepare and publish (each task start costs seconds:
    # docs/pipeline.md#the-cycle-new-answers---served); each step is still its own command, and a re-run of the task
    # after a crash at any of them adds nothing twice.
    publish = cli("publish", ["-m dkt data export", "-m dkt data prepare", "-m dkt data publish"],
                  timeout_minutes=45, outlets=[DATA_ASSET])  # fmt: skip
    # none_failed: when publish is skipped (nothing new) the cursor still moves past the exported rows.
    advance = cli("advance_watermark", "-m dkt data advance-watermark", timeout_minutes=5, trigger_rule="none_failed")
    drift = cli("drift", "-m dkt data drift", timeout_minutes=15, outlets=[DRIFT_ASSET])
    publish >> advance
    publish >> drift
