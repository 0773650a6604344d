"""The three DAGs: they import cleanly, and they run end to end with `airflow dags test` on an S3 store."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from dkt.data.io import read_csv
from pipeline import deploy
from pipeline.store import VersionedStore
from tests.conftest import TINY_LSTM
from tests.dags.airflow_runner import AIRFLOW_VENV, DAG_IDS, ROOT, airflow_env, dags_test, migrate, require_airflow
from tests.pipeline.s3server import moto_server
from tests.serving.servers import free_port

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


@pytest.mark.slow
def test_three_dags_in_order_on_s3(sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """update_data -> retrain_and_push -> update_inference_server, store in a real S3 endpoint (moto)."""
    home = tmp_path / "airflow"
    migrate(home)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 1}}))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    train = read_csv(sim_dir / "train.csv")
    batch = train.groupby("userID").tail(3).assign(Timestamp=lambda d: d["Timestamp"] + pd.Timedelta(days=1))
    batch.to_csv(inbox / "batch.csv", index=False)
    with moto_server(tmp_path / "moto.log") as s3:
        env = {
            **s3.env(prefix="dags"),
            "DKT_WORK_ROOT": str(tmp_path / "work"),
            "DKT_RUN_DIR": str(tmp_path / "run"),
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "DKT_SERVE_PORT": str(free_port()),
            "DKT_INFERENCE_URL_FILE": str(tmp_path / "run" / "inference_url"),
            "DKT_TRAIN_CONFIG": str(config),
            "DKT_DRAIN_SECONDS": "1",
            "DKT_EXPORT_CMD": f"{shlex.quote(sys.executable)} -m pipeline.file_export --source {inbox}",
        }
        push = subprocess.run([sys.executable, "-m", "dkt", "data", "push", str(sim_dir), "--version", "seed"],
                              env={**airflow_env(home, env)}, cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert push.returncode == 0, push.stderr
        try:
            dags_test(home, "update_data_dag", env, tmp_path / "update.log")
            dags_test(home, "retrain_and_push_dag", env, tmp_path / "retrain.log")
            dags_test(home, "update_inference_server_dag", env, tmp_path / "deploy.log", timeout=600)
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            store = VersionedStore.from_env()
            data_v = store.pointed("datasets", "latest")
            assert data_v != "seed"
            assert store.manifest("datasets", data_v)["added_rows"] == len(batch)
            prod = store.pointed("models", "production")
            assert store.manifest("models", prod)["data_version"] == data_v
            url = (tmp_path / "run" / "inference_url").read_text().strip()
            meta = requests.get(url + "/metadata", timeout=10).json()
            assert meta["model_version"] == prod and meta["data_version"] == data_v
        finally:
            monkeypatch.setenv("DKT_RUN_DIR", str(tmp_path / "run"))
            deploy.stop_local()
