"""init_for_inference_server.sh as an admin runs it, then an operator's DAG run through its scheduler.

The script sets the host up (engine, swarm, registry, base image, venvs, Airflow services with a
generated password, the stack on v1); a second run changes nothing; a promoted v2 then reaches the
stack through update_inference_server_dag, triggered like the UI does and run by the scheduler the
script started (not `airflow dags test`); `--stop` stops Airflow and removes the stack.

The DAG run is triggered and followed through the api-server's REST API, as the UI does: one `airflow` CLI
process per poll (4-5 CPU-s of imports each, every few seconds) would compete on a 2-core machine with the very
tasks it waits for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from pipeline.swarm_images import REPO_ROOT
from tests.dags.polling import dag_run, request
from tests.docker.conftest import timeline
from tests.support.ports import free_port
from tests.support.students import CSRF

pytestmark = [pytest.mark.slow, pytest.mark.docker]
SCRIPT = str(REPO_ROOT / "init_for_inference_server.sh")


def sh(argv: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def served_version(env: dict[str, str]) -> str | None:
    try:
        meta = requests.get(f"http://127.0.0.1:{env['DKT_INFERENCE_HOST_PORT']}/metadata", timeout=5).json()
    except (requests.RequestException, ValueError):
        return None
    version = meta.get("model_version")
    return str(version) if version else None


def test_admin_sets_up_the_host_then_a_promoted_model_reaches_the_stack(
    stack_env: dict[str, str], bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    v1, v2 = bundles
    env = {
        **stack_env,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "DKT_AIRFLOW_PORT": str(free_port()),
        # make test runs this suite beside the others, whose Airflow schedulers serve logs on the default 8793
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "DKT_APP_PYTHON": sys.executable,
        "DKT_TASK_RETRIES": "0",
    }
    try:
        # One replica: this test is about the host's set-up and the scheduler's DAG run; rolling updates over
        # several replicas under load are test_swarm_e2e's (each replica costs a model load on a shared CPU).
        t_first = time.monotonic()
        first = sh([SCRIPT, "--model-dir", str(v1), "--replicas", "1"], env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        print(f"\n[init] first run, {time.monotonic() - t_first:.0f} s:\n" + timeline(first.stdout + first.stderr))
        assert "password in" in first.stdout and served_version(env) == "test-v1"
        # The client's operator account (docs/accounts.md): its generated password is printed once and signs in.
        operator = re.search(r"client operator account: user operator, password (\S+)", first.stdout)
        assert operator, first.stdout[-3000:]
        web, client_url = requests.Session(), f"http://127.0.0.1:{env['DKT_CLIENT_HOST_PORT']}"
        csrf = CSRF.search(web.get(client_url + "/", timeout=30).text)
        assert csrf
        form = {"username": "operator", "password": operator.group(1), "csrf_token": csrf.group(1)}
        assert web.post(client_url + "/login", data=form, timeout=30, allow_redirects=False).status_code == 302
        status = sh([sys.executable, "-m", "dkt", "swarm", "status"], env)
        assert json.loads(status.stdout)["services"]["inference"]["replicas"] == 1, status.stdout[-2000:]
        pwfile = tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated"
        assert oct(pwfile.stat().st_mode & 0o777) == "0o600"
        password = json.loads(pwfile.read_text())["admin"]
        assert len(password) >= 12  # generated, never a fixed one
        url = f"http://127.0.0.1:{env['DKT_AIRFLOW_PORT']}"
        airflow_logs = [tmp_path / "airflow" / f"{n}.log" for n in ("api-server", "scheduler", "dag-processor")]
        api = requests.Session()
        token = request(api, "POST", f"{url}/auth/token", json={"username": "admin", "password": password},
                        logs=airflow_logs)  # fmt: skip
        assert token.status_code in (200, 201), token.text[:300]
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

        again = sh([SCRIPT], env)  # idempotent: nothing restarted, nothing redeployed
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.count("already running") == 3 and served_version(env) == "test-v1"
        assert "client operator account:" not in again.stdout  # printed once, never again

        push = sh([sys.executable, "-m", "dkt", "models", "push", str(v2), "--promote"], env)
        assert push.returncode == 0, push.stderr[-2000:]
        t0 = time.monotonic()
        state = dag_run(api, url, "update_inference_server_dag", f"promoted-{os.getpid()}", 600, airflow_logs)
        print(f"\n[init] promoted -> DAG run {state} through the scheduler in {time.monotonic() - t0:.0f} s")
        # On failure: the end of every task's log (the step that failed may be pull or pack, not deploy).
        logs = sorted((tmp_path / "airflow" / "logs").rglob("task_id=*/*.log"))
        assert state == "success", "\n".join(f"== {f}\n{f.read_text()[-2500:]}" for f in logs) or "no task log"
        assert served_version(env) == "test-v2"
    finally:
        stop = sh([SCRIPT, "--stop"], env, timeout=300)
    assert stop.returncode == 0, stop.stderr[-2000:]
    assert not list((tmp_path / "airflow").glob("airflow-*.pid"))
    left = subprocess.run(["pgrep", "-f", f"api-server --port {env['DKT_AIRFLOW_PORT']}"], capture_output=True)
    assert left.returncode == 1, left.stdout
    assert served_version(env) is None
    services = sh(["docker", "service", "ls", "--format", "{{.Name}}"], {**os.environ}).stdout.split()
    assert not [s for s in services if s.startswith(env["DKT_STACK"] + "_")]
