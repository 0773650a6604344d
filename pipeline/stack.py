"""``make up`` / ``make down``: the whole product on one machine, started idempotently.

    dkt stack up      # data, first model, BentoML service, client, Airflow; prints URLs
    dkt stack down    # stops everything `up` started
    dkt stack status
    dkt stack airflow-env  # shell exports of the executor settings (init_for_inference_server.sh)

Every step checks before it acts, so running ``up`` again only starts what is not
running. Runtime state: pids and logs in ``run/``, data in ``var/`` (store, client
database, Airflow home, BentoML store). Settings: see docs/pipeline.md.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import requests

from dkt import secret_file
from dkt.cli import run_actions
from dkt.settings import (
    AirflowSettings,
    ClientSettings,
    PrometheusSettings,
    StackSettings,
    TrainingSettings,
    is_set,
    load_or_exit,
)
from pipeline import deploy_local
from pipeline.blobs import pid_cmdline, runs_command
from pipeline.settings import REPO_ROOT
from pipeline.store import VersionedStore

_SETTINGS = load_or_exit(StackSettings)
VAR = _SETTINGS.var_dir
SIM_DIR = _SETTINGS.sim_dir
AIRFLOW_VENV = _SETTINGS.airflow_venv
# DKT_TRAIN_EXECUTOR=edge: the train-host tasks go to this executor (provider apache-airflow-providers-edge3),
# served by `airflow edge worker` on the GPU host (init_for_train_server.sh); the rest stays on LocalExecutor.
EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
OPERATOR_ACCOUNT = "operator"  # the client account `up` creates (init_for_inference_server.sh: the same name)


def defaults() -> dict[str, str]:
    """The environment every component gets: explicit values win, these fill the gaps."""
    run = deploy_local.run_dir()
    d = {
        "DKT_STORE_ROOT": str(VAR / "store"),
        "BENTOML_HOME": str(VAR / "bentoml"),
        "DKT_INFERENCE_URL_FILE": str(run / "inference_url"),
        "DKT_CLIENT_DB": str(VAR / "client.db"),
        "DKT_QUESTIONS": str(SIM_DIR / "questions.csv"),
        "DKT_APP_PYTHON": sys.executable,
        "AIRFLOW_HOME": str(VAR / "airflow"),
    }
    return {k: v for k, v in d.items() if not is_set(k)}


def say(msg: str) -> None:
    print(f"[up] {msg}", file=sys.stderr, flush=True)


def py(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"error: `python {' '.join(args)}` failed with exit {proc.returncode}")
    return proc


def pid_file(name: str) -> Path:
    return deploy_local.run_dir() / "pids" / f"{name}.pid"


# What the command line of a part `up` starts holds, also after the program retitles itself (gunicorn's
# "gunicorn: master [client:create_app()]" with setproctitle, Airflow's "airflow api_server -- host:...").
# A part not named here is known by its pid alone.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "client": ("gunicorn", "client:create_app()"),
    "airflow-api-server": ("airflow", "api-server"),
    "airflow-scheduler": ("airflow", "scheduler"),
    "airflow-dag-processor": ("airflow", "dag-processor"),
    "mlflow": ("mlflow", "server"),  # pipeline/mlflow_server.py
    "prometheus": ("prometheus", "--config.file"),  # pipeline/prometheus.py
}


def running(name: str) -> int | None:
    """The pid of the part ``name`` that ``start`` started, if it still runs. A pid file naming a process whose
    command line is not that part's (its pid reused after a reboot or a crash) is stale: that process is left
    alone, with a warning."""
    f = pid_file(name)
    if f.is_file():
        pid = int(f.read_text().strip() or 0)
        if deploy_local.alive(pid):
            if runs_command(pid, SIGNATURES.get(name, ())):
                return pid
            say(f"warning: {f} names pid {pid}, which runs `{pid_cmdline(pid)[:200]}`, not {name}: left alone")
    return None


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    if pid := running(name):
        say(f"{name} already running (pid {pid})")
        return pid
    logs = deploy_local.run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    pid_file(name).write_text(str(proc.pid))
    say(f"started {name} (pid {proc.pid}, log {logs / f'{name}.log'})")
    return proc.pid


def wait_http(url: str, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(
        f"error: {name} did not answer at {url} within {timeout:.0f}s; see {deploy_local.run_dir() / 'logs'}"
    )


def ensure_data(store: VersionedStore) -> None:
    if not (SIM_DIR / "train.csv").is_file():
        users = str(load_or_exit(StackSettings).sim_users)
        say(f"simulating {users} students into {SIM_DIR}")
        py("-m", "dkt", "simulate", "--users", users, "--out", str(SIM_DIR), "--seed", "0")
    if store.pointed("datasets", "latest") is None:
        say("pushing the initial data set")
        py("-m", "dkt", "data", "push", str(SIM_DIR))


def ensure_model(store: VersionedStore) -> None:
    if store.pointed("models", "production"):
        return
    work = VAR / "work" / "initial"
    data = work / "data"
    store.pull("datasets", "latest", data)
    training = load_or_exit(TrainingSettings)
    # No epoch cap unless DKT_TRAIN_EPOCHS sets one: early stopping decides (docs/pipeline.md#warm-start has how long).
    config = str(training.config)
    cap = ["--epochs", str(training.epochs)] if training.epochs else []
    say(f"training the first model ({config}, {f'{training.epochs} epochs' if cap else 'to early stopping'})")
    py("-m", "dkt", "train", "--config", config, "--train-file", str(data / "train.csv"), "--test-file",
       str(data / "test.csv"), "--output-dir", str(work / "model"), *cap,
       "--data-version", store.pointed("datasets", "latest") or "")  # fmt: skip
    py("-m", "dkt", "models", "push", str(work / "model"), "--promote")


def ensure_service(store: VersionedStore) -> str:
    prod = store.pointed("models", "production")
    st = deploy_local.read_state()
    if st.get("model_version") == prod and deploy_local.alive(st.get("pid")):
        say(f"inference service already serving {prod} at {st['url']}")
        return str(st["url"])
    # Swap strategy with a server running: the new model is swapped into it (no pack, no new server).
    say(f"{'swapping in' if deploy_local.swapping() else 'packing and serving'} model {prod}")
    run_id = f"up-{prod}"
    for step in ("pull-model", "pack", "deploy", "verify"):
        py("-m", "dkt", "deploy", step, "--run-id", run_id)
    return deploy_local.current_url()


def secret(name: str, nbytes: int = 24) -> str:
    """var/secrets/NAME: generated once, mode 0600 from its creation (dkt/secret_file.py)."""
    return secret_file.read_or_create(VAR / "secrets" / name, nbytes)


def train_executor() -> str:
    return load_or_exit(AirflowSettings).train_executor


def executor_env() -> dict[str, str]:
    """Airflow's executor settings on this (scheduler) host, from ``DKT_TRAIN_EXECUTOR``.

    ``local`` (default): LocalExecutor runs everything. ``edge``: LocalExecutor stays the default and the
    Edge executor serves the train-queue tasks (dags/dkt_tasks.py routes them with the same variable); the
    api-server then also serves the edge worker API (``/edge_worker/v1/rpcapi``). Edge workers sign their
    requests with the shared ``[api_auth] jwt_secret``: ``AIRFLOW__API_AUTH__JWT_SECRET`` when set, else one
    generated once into ``var/secrets/airflow_jwt_secret`` (copy that file to the train host)."""
    if train_executor() == "local":
        return {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    given = load_or_exit(StackSettings).jwt_secret
    return {
        "AIRFLOW__CORE__EXECUTOR": f"LocalExecutor,{EDGE_EXECUTOR}",
        "AIRFLOW__EDGE__API_ENABLED": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": given.get_secret_value()
        if given
        else secret("airflow_jwt_secret", nbytes=64),  # HS512 wants a key of at least 64 bytes
    }


def ensure_client() -> str:
    client = load_or_exit(ClientSettings)
    port = str(client.client_port)
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    env = {"DKT_SECRET_KEY": client.secret_key.get_secret_value() if client.secret_key else secret("client_secret_key")}
    # The operator page's latency panel asks the Prometheus `make up` starts, unless told another one.
    env["DKT_PROMETHEUS_URL"] = client.prometheus_url or f"http://127.0.0.1:{load_or_exit(PrometheusSettings).port}"
    start("client", [gunicorn, "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}", "client:create_app()"], env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", 60, "client")
    return url


def ensure_operator() -> str:
    """The client's operator account (docs/accounts.md): created on the first `up` with a generated password,
    which is returned to be printed once; stored nowhere but as its argon2 hash. Later: an empty string."""
    proc = py("-m", "dkt", "client", "create-user", "--role", "operator", "--if-missing", OPERATOR_ACCOUNT)
    return proc.stdout.strip()


def ensure_airflow() -> tuple[str, str]:
    settings = load_or_exit(StackSettings)
    home = settings.airflow_home or VAR / "airflow"  # up() sets AIRFLOW_HOME to the same when it is unset
    home.mkdir(parents=True, exist_ok=True)
    port = str(settings.airflow_port)
    # A remote edge worker needs to reach the api-server: DKT_AIRFLOW_HOST=0.0.0.0 (or the host's address).
    host = settings.airflow_host
    pw_file = home / "simple_auth_manager_passwords.json.generated"
    if not pw_file.is_file():
        pw_file.touch(mode=0o600)
        pw_file.write_text(json.dumps({"admin": secrets.token_urlsafe(16)}))
    password = json.loads(pw_file.read_text())["admin"]
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder or REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__API__HOST": host,
        **executor_env(),
    }
    airflow = str(AIRFLOW_VENV / "bin" / "airflow")
    if not running("airflow-api-server"):
        say("migrating the Airflow database")
        proc = subprocess.run([airflow, "db", "migrate"], cwd=REPO_ROOT, env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        if proc.returncode:
            raise SystemExit(f"error: airflow db migrate failed: {proc.stderr[-2000:]}")
    url = f"http://127.0.0.1:{port}"
    start("airflow-api-server", [airflow, "api-server", "--port", port, "--host", host], env)
    # Tasks talk to the execution API on the api-server: a scheduler started before it answers
    # runs the first (due @daily) task into a timeout and burns one of its retries.
    wait_http(url + "/api/v2/monitor/health", 180, "Airflow api-server")
    # No log server: Airflow 3.3's binds 0.0.0.0:8793 with no host option, and every task runs on this host, whose
    # api-server reads the task logs from the same files (an edge worker sends its logs to the api-server).
    start("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], env)
    start("airflow-dag-processor", [airflow, "dag-processor"], env)
    return url, password


def up() -> int:
    os.environ.update(defaults())
    store = VersionedStore.from_env()
    ensure_data(store)
    ensure_model(store)
    service = ensure_service(store)
    client = ensure_client()
    operator_password = ensure_operator()
    airflow, password = ensure_airflow()
    operator_line = (
        f"operator account {OPERATOR_ACCOUNT!r}, password {operator_password} - shown this once, keep it now"
        if operator_password
        else f"operator account {OPERATOR_ACCOUNT!r}: `dkt client reset-password {OPERATOR_ACCOUNT}` sets a new one"
    )
    print(
        f"""
DKT is up.
  students   {client}                 (the tutor; {operator_line})
  service    {service}          (BentoML: /metadata, /readyz, /predict)
  operators  {airflow}                 (Airflow; user admin, password {password})
  store      {store.blobs.url}
Stop everything with: make down
"""
    )
    if train_executor() == "edge":
        print(f"Train-queue tasks wait for an edge worker: on the train host run ./init_for_train_server.sh with\n"
              f"  DKT_AIRFLOW_URL=http://<this host>:{load_or_exit(StackSettings).airflow_port} and a copy of "
              f"{VAR / 'secrets' / 'airflow_jwt_secret'} (see its --help)\n")  # fmt: skip
    return 0


def stop_part(name: str) -> None:
    """Stop what ``start(name, ...)`` started, if it runs (its command line checked: ``running``), and forget its
    pid."""
    if pid := running(name):
        deploy_local.stop_group(pid)
        say(f"stopped {name} (pid {pid})")
    pid_file(name).unlink(missing_ok=True)


def down() -> int:
    for name in ("airflow-dag-processor", "airflow-scheduler", "airflow-api-server", "client"):
        stop_part(name)
    deploy_local.stop_local()
    say("stopped the inference service")
    return 0


def status() -> int:
    for name in ("client", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
        print(f"{name:24s} {'pid ' + str(pid) if (pid := running(name)) else 'stopped'}")
    st = deploy_local.read_state()
    alive = deploy_local.alive(st.get("pid"))
    print(f"{'inference':24s} {st.get('model_version') if alive else 'stopped'} {st.get('url', '') if alive else ''}")
    return 0


def airflow_env() -> int:
    """Print the executor settings as shell exports: ``eval "$(dkt stack airflow-env)"``."""
    for key, value in executor_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {
        "up": (up, "start what is not running: data, first model, inference service, client, Airflow"),
        "down": (down, "stop everything `up` started"),
        "status": (status, "what runs, and the model version served"),
        "airflow-env": (airflow_env, "the executor settings as shell exports (init_for_inference_server.sh)"),
    }
    return run_actions("dkt stack", __doc__, commands, argv)


if __name__ == "__main__":
    sys.exit(main())
