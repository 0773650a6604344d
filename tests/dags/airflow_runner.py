"""Running the real DAGs with ``airflow dags test`` from the Airflow virtualenv, in a throwaway AIRFLOW_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VENV = Path(os.environ.get("DKT_AIRFLOW_VENV", ROOT / ".venv-airflow"))
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
DAG_IDS = ("update_data_dag", "retrain_and_push_dag", "update_inference_server_dag")


def require_airflow() -> None:
    if not AIRFLOW.exists():
        raise RuntimeError(f"{AIRFLOW} not found: run `make test-setup` (creates .venv-airflow)")


def airflow_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DKT_APP_PYTHON": sys.executable,
        "DKT_TASK_RETRIES": "0",
        **extra,
    }


def migrate(home: Path) -> None:
    require_airflow()
    proc = subprocess.run([str(AIRFLOW), "db", "migrate"], env=airflow_env(home, {}), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def dags_test(
    home: Path, dag_id: str, env: dict[str, str], log: Path, timeout: int = 900, conf: dict[str, object] | None = None
) -> str:
    """Run one DAG to the end (with run ``conf``, the params a UI trigger sets); returns its log.
    Raises with the log's tail when the run fails."""
    argv = [str(AIRFLOW), "dags", "test", dag_id, *(["-c", json.dumps(conf)] if conf else [])]
    with log.open("w") as out:
        proc = subprocess.run(argv, env=airflow_env(home, env), stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=ROOT)  # fmt: skip
    text = log.read_text()
    if proc.returncode != 0 or "state=success" not in text:
        raise AssertionError(f"{dag_id} failed (exit {proc.returncode}); log {log}:\n{text[-6000:]}")
    return text
