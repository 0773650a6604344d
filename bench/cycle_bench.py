"""Time one retraining cycle: "N new interactions stored" -> "the service answers with the new model".

    .venv/bin/python bench/cycle_bench.py [--users 500] [--new 200] [--epochs 3] [--config config/lstm.json]

Sets up a throwaway stack in a temp folder (simulated data, a first model, the BentoML
service, the client), lets simulated students store N answers through the client, then
runs the three DAGs with `airflow dags test` and prints the seconds of each step. While the
model is switched, students keep answering; failed requests are counted (target: 0).
Target for the full cycle with the default model: under 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dkt.settings import StackSettings, load_or_exit  # noqa: E402
from pipeline import deploy  # noqa: E402
from pipeline.store import VersionedStore  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.students import answering, client_server, run_students  # noqa: E402


def sh(argv: list[str], env: dict[str, str], log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed (exit {rc}); see {log}")
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=500, help="students in the initial data set (as make up)")
    p.add_argument("--new", type=int, default=200, help="new interactions stored through the client")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the retrain step")
    p.add_argument("--config", default=str(ROOT / "config" / "lstm.json"), help="model config (default: lstm)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dkt-cycle-"))
    airflow = str(load_or_exit(StackSettings).airflow_venv / "bin" / "airflow")
    env = {
        **os.environ,
        "DKT_STORE": "local",
        "DKT_STORE_ROOT": str(tmp / "store"),
        "DKT_WORK_ROOT": str(tmp / "work"),
        "DKT_RUN_DIR": str(tmp / "run"),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "DKT_SERVE_PORT": str(free_port()),
        "DKT_INFERENCE_URL_FILE": str(tmp / "run" / "inference_url"),
        "DKT_CLIENT_DB": str(tmp / "client.db"),
        "DKT_QUESTIONS": str(tmp / "sim" / "questions.csv"),
        "DKT_SECRET_KEY": "bench-only",
        "DKT_TRAIN_CONFIG": args.config,
        "DKT_TRAIN_EPOCHS": str(args.epochs),
        "DKT_PROMOTE_TOLERANCE": "1.0",
        "DKT_APP_PYTHON": sys.executable,
        "DKT_TASK_RETRIES": "0",
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    os.environ.update(env)
    logs = tmp / "logs"
    logs.mkdir()
    py = sys.executable
    print(f"setting up in {tmp} ...", file=sys.stderr)
    sh([airflow, "db", "migrate"], env, logs / "migrate.log")
    sh([py, "-m", "dkt", "simulate", "--users", str(args.users), "--out", str(tmp / "sim"), "--seed", "0"], env,
       logs / "sim.log")  # fmt: skip
    sh([py, "-m", "dkt", "data", "push", str(tmp / "sim")], env, logs / "push.log")
    sh([py, "-m", "dkt", "train", "--config", args.config, "--train-file", str(tmp / "sim" / "train.csv"),
        "--test-file", str(tmp / "sim" / "test.csv"), "--output-dir", str(tmp / "m0"), "--epochs", "1",
        "--model-version", "v0", "--no-progress"], env, logs / "train0.log")  # fmt: skip
    sh([py, "-m", "dkt", "models", "push", str(tmp / "m0"), "--promote"], env, logs / "pushm.log")
    for step in ("pull-model", "pack", "deploy", "verify"):
        sh([py, "-m", "dkt", "deploy", step, "--run-id", "initial"], env, logs / f"initial-{step}.log")
    figures: dict[str, float] = {}
    questions = tmp / "sim" / "questions.csv"
    try:
        with client_server(env, free_port(), logs / "client.log") as base:
            stored = run_students(base, questions, max(1, args.new // 10), 10, seed=1)
            print(f"stored {stored.answers} new interactions through the client ({stored.failed} failed)",
                  file=sys.stderr)  # fmt: skip
            t0 = time.perf_counter()
            figures["update_data_dag"] = sh([airflow, "dags", "test", "update_data_dag"], env, logs / "update.log")
            figures["retrain_and_push_dag"] = sh([airflow, "dags", "test", "retrain_and_push_dag"], env,
                                                 logs / "retrain.log")  # fmt: skip
            with answering(base, questions) as during:
                figures["update_inference_server_dag"] = sh(
                    [airflow, "dags", "test", "update_inference_server_dag"], env, logs / "deploy.log"
                )
            store = VersionedStore.from_env()
            prod = store.pointed("models", "production")
            meta = requests.get(deploy.current_url() + "/metadata", timeout=10).json()
            figures["total"] = time.perf_counter() - t0
        result = {
            "new_interactions": stored.answers,
            "seconds": {k: round(v, 1) for k, v in figures.items()},
            "served_version": meta.get("model_version"),
            "promoted_version": prod,
            "new_model_served": meta.get("model_version") == prod != "v0",
            # each answer is two requests: GET /practice and POST /answer
            "requests_during_switch": during.answers * 2,
            "failed_requests_during_switch": during.failed,
            "target_total_seconds": 300,
        }
        print(json.dumps(result, indent=2))
    finally:
        deploy.stop_local()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
