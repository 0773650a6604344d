"""The three DAGs import cleanly, with the tasks, queues, outlets and params the pipeline relies on.
Their run end to end (`airflow dags test` on an S3 store) is tests/dags/test_e2e.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.dags.airflow_runner import AIRFLOW_VENV, DAG_IDS, ROOT, airflow_env, require_airflow

CHECK_DAGS = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag("{dags}")
out = {{"errors": {{k: str(v)[-500:] for k, v in bag.import_errors.items()}}, "dags": {{}}}}
for d in bag.dags.values():
    out["dags"][d.dag_id] = {{
        "tasks": {{t.task_id: {{"queue": t.queue, "retries": t.retries, "outlets": [o.name for o in t.outlets],
                              "timeout": t.execution_timeout.total_seconds()}} for t in d.tasks}},
        "timetable": type(d.timetable).__name__,
        "params": d.params.dump(),
    }}
serve = bag.dags["update_inference_server_dag"]
deploy = serve.get_task("deploy")
out["deploy_commands"] = {{
    str(n): deploy.render_template(deploy.bash_command, {{"params": {{"replicas": n}}, "run_id": "r1"}},
                                   jinja_env=serve.get_template_env())
    for n in (5, None)
}}
print(json.dumps(out))
"""


def test_dags_import_without_errors(tmp_path: Path) -> None:
    require_airflow()
    proc = subprocess.run(
        [str(AIRFLOW_VENV / "bin" / "python"), "-c", CHECK_DAGS.format(dags=ROOT / "dags")],
        env=airflow_env(tmp_path / "home", {"DKT_TASK_RETRIES": "2"}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    assert sorted(info["dags"]) == sorted(DAG_IDS)
    retrain = info["dags"]["retrain_and_push_dag"]["tasks"]
    assert {t for t, v in retrain.items() if v["queue"] == "train"} == {
        "pull_data",
        "train",
        "evaluate",
        "push_candidate",
    }
    assert retrain["promote_if_better"]["outlets"] == ["dkt_model_production"]
    assert info["dags"]["update_data_dag"]["tasks"]["publish"]["outlets"] == ["dkt_dataset_latest"]
    assert info["dags"]["retrain_and_push_dag"]["timetable"] == "AssetTriggeredTimetable"
    assert info["dags"]["update_inference_server_dag"]["timetable"] == "AssetTriggeredTimetable"
    # Operators scale inference by triggering the deploy DAG with {"replicas": N}; empty keeps the count.
    assert info["dags"]["update_inference_server_dag"]["params"] == {"replicas": None}
    assert info["deploy_commands"]["5"].endswith("-m dkt deploy deploy --replicas 5 --run-id 'r1'")
    assert "--replicas" not in info["deploy_commands"]["None"]
    for dag in info["dags"].values():
        assert all(t["retries"] == 2 and t["timeout"] > 0 for t in dag["tasks"].values())
    # No secret in DAG code: credentials only ever come from the worker's environment.
    for f in (ROOT / "dags").glob("*.py"):
        text = f.read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text and "password" not in text.lower(), f
