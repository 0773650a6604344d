"""The MLflow tracking server of ``make up``: where every training run is recorded (docs/tracking.md).

    python -m pipeline.mlflow_server up       # start it (SQLite backend, artifacts in the store), print its address
    python -m pipeline.mlflow_server down     # stop it
    python -m pipeline.mlflow_server status
    python -m pipeline.mlflow_server uri      # the address trainings report to (mk/mlflow.mk exports it)

The server runs from its own virtualenv (DKT_MLFLOW_VENV, ``make mlflow-venv``): the full ``mlflow`` package
conflicts with the app's gunicorn, the app venv has only the client (mlflow-skinny). Runs and metrics live in
SQLite under $DKT_VAR_DIR/mlflow; artifacts go where the data sets and models go: a folder beside the local
store, or ``s3://$DKT_S3_BUCKET/$DKT_S3_PREFIX/mlflow`` with DKT_STORE=s3 (the server proxies them, so
trainings need no store credentials). Pid and log in $DKT_RUN_DIR like the other parts of ``make up``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dkt.cli import run_actions
from dkt.settings import MlflowSettings, StackSettings, StoreSettings, load_or_exit, stop
from pipeline.prometheus import port_taken
from pipeline.stack import running, start, stop_part, wait_http

NAME = "mlflow"  # the pid and log name under $DKT_RUN_DIR
INSTALL_HINT = "`make mlflow-venv` creates it"


def state_dir() -> Path:
    return load_or_exit(StackSettings).var_dir / "mlflow"


def uri() -> str:
    return f"http://127.0.0.1:{load_or_exit(MlflowSettings).port}"


def artifacts_destination() -> tuple[str, dict[str, str]]:
    """Where the server keeps artifacts, and the environment it needs to reach them."""
    store = load_or_exit(StoreSettings)
    if store.kind == "s3":
        key = "/".join(p for p in (store.prefix, "mlflow") if p)
        # MLflow's S3 client reads its endpoint from its own variable; the credentials boto3 finds itself.
        env = {"MLFLOW_S3_ENDPOINT_URL": store.endpoint_url} if store.endpoint_url else {}
        return f"s3://{store.bucket}/{key}", env
    return str(state_dir() / "artifacts"), {}


def server_argv(mlflow: Path, port: int, database: Path, artifacts: str) -> list[str]:
    """The tracking server command: SQLite backend, artifacts proxied by the server (``mlflow-artifacts:``),
    one worker (2 shared cores; a training logs a few requests per run)."""
    return [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{database.resolve()}",
            "--artifacts-destination", artifacts, "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip


def executable() -> Path:
    exe = load_or_exit(MlflowSettings).venv / "bin" / "mlflow"
    if not exe.is_file():
        stop(f"DKT_MLFLOW_VENV: {exe} not found; {INSTALL_HINT}")
    return exe


def up() -> int:
    settings = load_or_exit(MlflowSettings)
    exe = executable()
    if not running(NAME):
        if port_taken(settings.port):
            stop(f"DKT_MLFLOW_PORT={settings.port}: the port is in use by another process (choose another port)")
        state_dir().mkdir(parents=True, exist_ok=True)
        artifacts, env = artifacts_destination()
        start(NAME, server_argv(exe, settings.port, state_dir() / "mlflow.db", artifacts), env)
    # The first start creates the SQLite schema (a minute on a busy 2-core machine).
    wait_http(uri() + "/health", 300, "MLflow")
    print("MLflow is up.")
    print(f"  runs       {uri()}          (MLflow tracking: every training's parameters, curves, metrics)")
    return 0


def down() -> int:
    stop_part(NAME)
    return 0


def status() -> int:
    print(f"{NAME:24s} {f'pid {pid} {uri()}' if (pid := running(NAME)) else 'stopped'}")
    return 0


def print_uri() -> int:
    print(uri())
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {
        "up": (up, "start the tracking server (unless it runs), print its address"),
        "down": (down, "stop the server `up` started"),
        "status": (status, "whether it runs, and where"),
        "uri": (print_uri, "the address trainings report to (DKT_MLFLOW_TRACKING_URI of `make up`)"),
    }
    return run_actions("python -m pipeline.mlflow_server", __doc__, commands, argv)


if __name__ == "__main__":
    sys.exit(main())
