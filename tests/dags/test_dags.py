"""The DAGs import cleanly, with the tasks, queues, outlets and params the pipeline relies on.
Their run end to end (`airflow dags test` on an S3 store) is tests/dags/test_e2e.py."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from tests.dags.airflow_runner import DAG_IDS, ROOT


def test_dags_import_without_errors(dag_info: dict[str, Any]) -> None:
    info = dag_info["local"]
    assert info["errors"] == {}
    assert sorted(info["dags"]) == sorted(DAG_IDS)
    retrain = info["dags"]["retrain_and_push_dag"]["tasks"]
    # Two tasks on one host (fewer task starts per cycle): pull-data runs in the train task, push-candidate and
    # promote-if-better in the evaluate task; with the Edge executor promote_if_better is a task on the scheduler host
    # (tests/dags/test_edge_worker.py).
    assert {t for t, v in retrain.items() if v["queue"] == "train"} == {"train", "evaluate_and_promote"} == set(retrain)
    assert retrain["evaluate_and_promote"]["outlets"] == ["dkt_model_production"]
    assert set(dag_info["edge"]["dags"]["retrain_and_push_dag"]["tasks"]) == {"train", "evaluate", "promote_if_better"}
    # A task's steps run in one process (dkt steps), each the command a person runs by hand, params in place.
    python = f"exec {shlex.quote(sys.executable)} -m dkt steps --run-id 'r1' "
    assert (
        retrain["train"]["command"]
        == python + "'models pull-data' 'models train --candidates '\"'\"'lstm,saint'\"'\"''"
    )
    publish = info["dags"]["update_data_dag"]["tasks"]["publish"]
    assert publish["command"] == python + "'data export' 'data prepare' 'data publish'"
    assert publish["outlets"] == ["dkt_dataset_latest"]
    # Retraining starts on drift (docs/monitoring.md#drift): the drift task emits the asset the retrain DAG waits on;
    # with DKT_DRIFT_PSI_THRESHOLD=0 (every version retrains) it starts on the data asset, drift reporting beside it.
    assert info["dags"]["update_data_dag"]["tasks"]["drift"]["outlets"] == ["dkt_dataset_drifted"]
    assert info["dags"]["retrain_and_push_dag"]["schedule_assets"] == ["dkt_dataset_drifted"]
    every = dag_info["every-version"]["dags"]
    assert every["retrain_and_push_dag"]["schedule_assets"] == ["dkt_dataset_latest"]
    assert every["update_data_dag"]["tasks"]["drift"]["outlets"] == ["dkt_dataset_drifted"]
    assert info["dags"]["update_inference_server_dag"]["schedule_assets"] == ["dkt_model_production"]
    assert info["dags"]["retrain_and_push_dag"]["timetable"] == "AssetTriggeredTimetable"
    assert info["dags"]["update_inference_server_dag"]["timetable"] == "AssetTriggeredTimetable"
    # The shadow gate: one task on the scheduler host, on a schedule (DKT_PROMOTE_SHADOW_SCHEDULE, @hourly);
    # a promotion emits the asset the deploy DAG runs on.
    shadow = info["dags"]["promote_shadow_dag"]
    assert list(shadow["tasks"]) == ["promote_shadow"] and shadow["tasks"]["promote_shadow"]["queue"] != "train"
    assert shadow["tasks"]["promote_shadow"]["outlets"] == ["dkt_model_production"]
    assert shadow["timetable"] == "CronTriggerTimetable" and shadow["schedule_assets"] == []
    # Operators scale inference by triggering the deploy DAG with {"replicas": N}; empty keeps the count.
    assert info["dags"]["update_inference_server_dag"]["params"] == {"replicas": None}
    # Retraining chooses among DKT_TRAIN_CANDIDATES unless triggered with {"candidates": "lstm,bert"}.
    assert info["dags"]["retrain_and_push_dag"]["params"] == {"candidates": ""}
    assert info["deploy_commands"]["5"].endswith(" 'deploy deploy --replicas 5' 'deploy verify'")
    assert "--replicas" not in info["deploy_commands"]["None"]
    for dag in info["dags"].values():
        assert all(t["retries"] == 2 and t["timeout"] > 0 for t in dag["tasks"].values())
    # No secret in DAG code: credentials only ever come from the worker's environment.
    for f in (ROOT / "dags").glob("*.py"):
        text = f.read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text and "password" not in text.lower(), f
