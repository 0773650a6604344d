"""The train host's Airflow worker: with DKT_TRAIN_EXECUTOR=edge the DAGs' GPU tasks go to the Edge executor,
and the worker that init_for_train_server.sh starts runs them.

The slow test runs both hosts on this machine: Airflow (api-server, scheduler, dag-processor) started by
``pipeline.stack.ensure_airflow`` as ``make up`` does, and the worker started by the script itself."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline import stack
from tests.dags.airflow_runner import ROOT, require_airflow
from tests.dags.polling import ATTEMPT_TIMEOUT, dag_run, request, tails, wait_for
from tests.support.ports import free_port

SCRIPT = ROOT / "init_for_train_server.sh"


def test_train_tasks_route_to_the_edge_executor(dag_info: dict[str, Any]) -> None:
    """The real retrain DAG: unset/local -> no executor, the promotion in the evaluate task (one host); edge ->
    EdgeExecutor and queue train for the train-host tasks, promote_if_better on the scheduler host."""
    local = dag_info["local"]["dags"]["retrain_and_push_dag"]["tasks"]
    assert {t: (v["queue"], v["executor"]) for t, v in local.items()} == {
        "train": ("train", None),
        "evaluate_and_promote": ("train", None),
    }
    assert dag_info["edge"]["errors"] == {}, dag_info["edge"]["errors"]
    edge = dag_info["edge"]["dags"]["retrain_and_push_dag"]["tasks"]
    assert {t for t, v in edge.items() if v["queue"] == "train"} == {"train", "evaluate"}
    assert {t: v["executor"] for t, v in edge.items()} == {"train": "EdgeExecutor", "evaluate": "EdgeExecutor",
                                                           "promote_if_better": None}  # fmt: skip


def test_executor_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "VAR", tmp_path / "var")
    monkeypatch.delenv("AIRFLOW__API_AUTH__JWT_SECRET", raising=False)
    monkeypatch.delenv("DKT_TRAIN_EXECUTOR", raising=False)
    assert stack.executor_env() == {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    assert not (tmp_path / "var").exists()
    monkeypatch.setenv("DKT_TRAIN_EXECUTOR", "edge")
    env = stack.executor_env()
    secret = tmp_path / "var" / "secrets" / "airflow_jwt_secret"
    assert env == {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor",
        "AIRFLOW__EDGE__API_ENABLED": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret.read_text(),
    }
    assert secret.stat().st_mode & 0o077 == 0 and len(secret.read_text()) >= 64
    assert stack.executor_env() == env  # generated once
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "given")
    assert stack.executor_env()["AIRFLOW__API_AUTH__JWT_SECRET"] == "given"
    monkeypatch.setenv("DKT_TRAIN_EXECUTOR", "celery")
    with pytest.raises(SystemExit, match="DKT_TRAIN_EXECUTOR"):
        stack.executor_env()


def test_train_script_needs_the_shared_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    helped = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "DKT_AIRFLOW_URL" in helped.stdout and "--worker-only" in helped.stdout
    env |= {"AIRFLOW_HOME": str(tmp_path / "w"), "DKT_AIRFLOW_JWT_SECRET_FILE": str(tmp_path / "missing")}
    proc = subprocess.run(["bash", str(SCRIPT), "--worker-only"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "airflow_jwt_secret" in proc.stderr, proc.stderr
    assert not (tmp_path / "w").exists()


# Test-only, for both hosts: the edge worker signs each request with a token valid for [api_auth] jwt_leeway
# seconds (30) and the api-server accepts it that much late again. On a CI machine at load 12 a request waited
# longer than that for the api-server: the worker's heartbeat got 403, its loop died and the job stayed
# "running". The product keeps Airflow's default; the test allows a starved api-server ten minutes. Likewise a task's
# calls to the execution API (5 s each, 5 tries by default): at load 15 all five timed out (httpx.ReadTimeout in the
# worker's job) and the probe task failed; the test allows each call a minute.
STARVED_MACHINE = {"AIRFLOW__API_AUTH__JWT_LEEWAY": "600", "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60"}

# The probe DAG: dkt_tasks.cli tasks, one routed like the retrain DAG's GPU tasks, one like promote_if_better.
PROBE_DAG = """
import sys
from datetime import datetime

sys.path.insert(0, {dags!r})
from airflow.sdk import DAG
from dkt_tasks import cli

with DAG("edge_probe", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    cli("on_train_host", {train!r}, timeout_minutes=5, train_host=True) >> cli("here", {here!r}, timeout_minutes=5)
"""
# Each task records where it ran: AIRFLOW_HOME (the worker's or the scheduler host's) and HOSTNAME (the edge
# worker sets it to its name).
MARK = (
    "import json, os, sys; "
    "json.dump({k: os.environ.get(k) for k in ('AIRFLOW_HOME', 'HOSTNAME')}, open(sys.argv[1], 'w'))"
)


@pytest.fixture
def airflow_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The inference host's Airflow as `DKT_TRAIN_EXECUTOR=edge make up` starts it, on a probe DAG folder."""
    require_airflow()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    dags, out = tmp_path / "dags", tmp_path / "out"
    dags.mkdir()
    out.mkdir()
    code = f"-c {shlex.quote(MARK)}"
    train, here = f"{code} {out / 'train.json'}", f"{code} {out / 'here.json'}"
    (dags / "edge_probe.py").write_text(PROBE_DAG.format(dags=str(ROOT / "dags"), train=train, here=here))
    port = free_port()
    env = {
        "AIRFLOW_HOME": str(tmp_path / "central"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "DKT_AIRFLOW_PORT": str(port),
        "DKT_RUN_DIR": str(tmp_path / "run"),
        "DKT_TRAIN_EXECUTOR": "edge",
        "DKT_APP_PYTHON": sys.executable,
        "DKT_TASK_RETRIES": "0",
        **STARVED_MACHINE,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AIRFLOW__API_AUTH__JWT_SECRET", raising=False)
    monkeypatch.setattr(stack, "VAR", tmp_path / "var")  # the generated secret goes to var/secrets there
    logs = [tmp_path / "run" / "logs" / f"airflow-{n}.log" for n in ("api-server", "scheduler", "dag-processor")]
    try:
        url, password = stack.ensure_airflow()
        yield {"url": url, "password": password, "base_env": base, "out": out, "logs": logs, "dags": dags,
               "secret_file": tmp_path / "var" / "secrets" / "airflow_jwt_secret"}  # fmt: skip
    finally:
        stack.down()


@pytest.mark.slow
def test_edge_worker_runs_the_train_queue(airflow_edge: dict[str, Any], tmp_path: Path) -> None:
    af = airflow_edge
    url: str = af["url"]
    worker_home = tmp_path / "worker"
    name = f"dkt-edge-test-{os.getpid()}"
    # What the admin sets on the train host: the URL, a copy of the secret file, the worker's name.
    copied = tmp_path / "train-host-secret"
    copied.write_text(af["secret_file"].read_text())
    worker_env = {
        **af["base_env"],
        "AIRFLOW_HOME": str(worker_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(af["dags"]),  # the same DAG files as the inference host's
        "DKT_AIRFLOW_URL": url,
        "DKT_AIRFLOW_JWT_SECRET_FILE": str(copied),
        "DKT_EDGE_HOSTNAME": name,
        "DKT_APP_PYTHON": sys.executable,
        "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",
        "DKT_WORKER_WAIT": "300",  # registration on a starved machine; the script's default is 120 s
        **STARVED_MACHINE,
    }
    worker_log = worker_home / "edge-worker.log"
    logs = [*af["logs"], worker_log]

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], env=worker_env, capture_output=True, text=True,
                              timeout=420, start_new_session=True)  # fmt: skip

    started = script("--worker-only")
    worker_pid = int((worker_home / "edge-worker.pid").read_text()) if started.returncode == 0 else None
    try:
        assert started.returncode == 0, started.stdout + started.stderr + tails(*logs)
        assert "worker registered" in started.stdout
        again = script("--worker-only")  # idempotent: a second run leaves the running worker alone
        assert again.returncode == 0 and f"worker already running (pid {worker_pid}" in again.stdout, again.stdout

        api = requests.Session()
        token = request(api, "POST", f"{url}/auth/token", json={"username": "admin", "password": af["password"]},
                        logs=logs)  # fmt: skip
        assert token.status_code in (200, 201), token.text
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

        workers = request(api, "GET", f"{url}/edge_worker/ui/worker", logs=logs).json()["workers"]
        mine = next(w for w in workers if w["worker_name"] == name)
        assert mine["queues"] == ["train"] and mine["state"] in ("starting", "idle", "running"), mine

        run_id = f"probe-{os.getpid()}"
        state = dag_run(api, url, "edge_probe", run_id, 300, logs)
        run_url = f"{url}/api/v2/dags/edge_probe/dagRuns/{run_id}"
        tis = {
            t["task_id"]: t for t in request(api, "GET", f"{run_url}/taskInstances", logs=logs).json()["task_instances"]
        }
        assert state == "success", json.dumps(tis, indent=1) + tails(*logs)

        # The train-queue task went through the Edge executor to this worker, the other one stayed local.
        remote, local = tis["on_train_host"], tis["here"]
        assert (remote["executor"], remote["queue"], remote["hostname"]) == ("EdgeExecutor", "train", name), remote
        assert local["executor"] is None and local["hostname"] != name, local
        assert json.loads((af["out"] / "train.json").read_text()) == {"AIRFLOW_HOME": str(worker_home),
                                                                      "HOSTNAME": name}  # fmt: skip
        assert json.loads((af["out"] / "here.json").read_text())["AIRFLOW_HOME"] == str(tmp_path / "central")

        def edge_jobs() -> list[tuple[str, str, str, str]] | None:
            jobs = api.get(f"{url}/edge_worker/ui/jobs", timeout=ATTEMPT_TIMEOUT).json()["jobs"]
            got = [(j["task_id"], j["edge_worker"], j["queue"], j["state"]) for j in jobs]
            return got if all(j[3] != "running" for j in got) else None  # the worker reports the job's end last

        assert wait_for("the edge job to finish", edge_jobs, 120, logs) == [("on_train_host", name, "train", "success")]
        # The worker wrote the task's log on its own host (and pushed it to the central site).
        assert list(worker_home.glob("logs/dag_id=edge_probe/**/task_id=on_train_host/*.log"))
        assert not list(worker_home.glob("logs/dag_id=edge_probe/**/task_id=here/*"))

        stopped = script("--stop-worker")
        assert stopped.returncode == 0 and f"worker stopped (pid {worker_pid})" in stopped.stdout, stopped.stdout
        workers = request(api, "GET", f"{url}/edge_worker/ui/worker", logs=logs).json()["workers"]
        assert next(w for w in workers if w["worker_name"] == name)["state"] == "offline"
    finally:
        if worker_pid:
            subprocess.run(["bash", str(SCRIPT), "--stop-worker"], env=worker_env, capture_output=True, timeout=120)
