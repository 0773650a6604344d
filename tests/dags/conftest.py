"""The three DAGs as Airflow loads them, read once per test run for the tests that inspect them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline import stack
from tests.conftest import made_once
from tests.dags.airflow_runner import AIRFLOW_VENV, ROOT, airflow_env, require_airflow

# Runs in the Airflow venv: the DAG folder loaded by a DagBag once per DKT_TRAIN_EXECUTOR mode (dkt_tasks reads
# the variable at import), and what the tests check of each DAG. One process for both modes and every test:
# importing Airflow and the DAGs costs 10-20 s of CPU on a busy machine.
DAG_INFO = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
out = {}
# "every-version": local with DKT_DRIFT_PSI_THRESHOLD=0 (retrain on every new data version)
for mode in ("local", "edge", "every-version"):
    os.environ["DKT_TRAIN_EXECUTOR"] = "edge" if mode == "edge" else "local"
    os.environ["DKT_DRIFT_PSI_THRESHOLD"] = "0" if mode == "every-version" else "0.2"
    sys.modules.pop("dkt_tasks", None)
    bag = DagBag(sys.argv[1])
    info = {"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()}, "dags": {}}
    for d in bag.dags.values():
        info["dags"][d.dag_id] = {
            "tasks": {t.task_id: {"queue": t.queue, "executor": t.executor, "retries": t.retries,
                                  "outlets": [o.name for o in t.outlets],
                                  "timeout": t.execution_timeout.total_seconds()} for t in d.tasks},
            "timetable": type(d.timetable).__name__,
            "schedule_assets": sorted(a.name for a in getattr(getattr(d.timetable, "asset_condition", None),
                                                              "objects", ())),
            "params": d.params.dump(),
        }
    for dag_id, task_id in (("update_data_dag", "publish"), ("retrain_and_push_dag", "train")):
        if (d := bag.dags.get(dag_id)) is not None:
            task = d.get_task(task_id)
            info["dags"][dag_id]["tasks"][task_id]["command"] = task.render_template(
                task.bash_command, {"params": {"candidates": "lstm,saint"}, "run_id": "r1"},
                jinja_env=d.get_template_env())
    serve = bag.dags.get("update_inference_server_dag")
    if serve is not None:
        deploy = serve.get_task("deploy")
        info["deploy_commands"] = {
            str(n): deploy.render_template(deploy.bash_command, {"params": {"replicas": n}, "run_id": "r1"},
                                           jinja_env=serve.get_template_env())
            for n in (5, None)
        }
    out[mode] = info
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def dag_info(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"local": ..., "edge": ...}``: import errors, tasks (queue, executor, retries, outlets, timeout),
    timetable and params of each DAG, loaded with DKT_TASK_RETRIES=2 and the executors as
    `DKT_TRAIN_EXECUTOR=edge make up` sets them (a task naming an unlisted executor fails to load)."""
    require_airflow()

    def load(out: Path) -> None:
        executors = {"AIRFLOW__CORE__EXECUTOR": f"LocalExecutor,{stack.EDGE_EXECUTOR}"}
        env = airflow_env(out / "home", {"DKT_TASK_RETRIES": "2", **executors})
        proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "python"), "-c", DAG_INFO, str(ROOT / "dags")], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        (out / "dag_info.json").write_text(proc.stdout.strip().splitlines()[-1])

    return json.loads((made_once(tmp_path_factory, "dag_info", load) / "dag_info.json").read_text())
