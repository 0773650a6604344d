"""MLflow tracking of training runs (dkt/tracking.py): a real ``mlflow server`` (from .venv-mlflow, SQLite, the
command ``make up`` runs) records what train.py trained, read back through MlflowClient; without a server, or with
one that fails, training goes on with one warning line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dkt.bundle import read_meta
from dkt.settings import MlflowSettings, load
from dkt.tracking import curve_points, flat_params, training_run
from pipeline.blobs import pid_alive
from pipeline.mlflow_server import artifacts_destination
from tests.conftest import ROOT, TINY_LSTM
from tests.support.ports import free_port

TINY = {**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 2, "patience": 5}}


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "MLflow" in line]


# -- fast: the warning paths, real HTTP ---------------------------------------------------------------------


def test_unset_uri_warns_once_and_tracks_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("DKT_MLFLOW_TRACKING_URI", raising=False)
    with training_run("lstm", {"seed": "1"}) as tracked:
        assert tracked.record({"data_version": "d1"}, {"test_auc": 0.7}, [], Path(".")) == {}
    assert not tracked.on
    err = capsys.readouterr().err
    assert warnings_of(err) == [
        "warning: MLflow tracking: DKT_MLFLOW_TRACKING_URI is not set (`make up` sets it; docs/tracking.md);"
        " this training is not tracked"
    ]


def test_unreachable_server_only_warns_and_training_completes(
    sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A whole (tiny, in-process) training with nothing listening at the URI: the bundle is written as always,
    without a run id, and stderr has one warning line naming the address, no traceback."""
    from dkt.config import parse_config
    from dkt.experiment import load_run_data, run

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DKT_MLFLOW_TRACKING_URI", uri)
    data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
    config = parse_config({**TINY, "train": {**TINY["train"], "epochs": 1}})
    metrics = run(config, data, tmp_path / "b", device="cpu", seed=1, progress=False)
    assert metrics["test_auc"] > 0.5
    meta = read_meta(tmp_path / "b")
    assert "mlflow_run_id" not in meta
    err = capsys.readouterr().err
    [line] = warnings_of(err)
    assert line.startswith(f"warning: MLflow tracking: no tracking server answers at {uri} (ConnectionError"), line
    assert "Traceback" not in err


class _HealthOnly(BaseHTTPRequestHandler):
    """Answers /health like MLflow, and 500 to every API call: a server that breaks after the probe."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 500)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_server_failing_after_the_probe_warns_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("DKT_MLFLOW_TRACKING_URI", uri)
    # MLflow's client retries a 500 with backoff; one retry keeps this test short (the setting is MLflow's own).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        with training_run("lstm", {"seed": "1"}) as tracked:
            tracked.record({}, {"test_auc": 0.7}, [{"epoch": 1, "valid_auc": 0.6}], Path("."))
    finally:
        server.shutdown()
    assert not tracked.on
    [line] = warnings_of(capsys.readouterr().err)
    assert line.startswith(f"warning: MLflow tracking: reading the experiment failed at {uri} ("), line


def test_a_failed_training_still_raises_its_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKT_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="the training's own error"), training_run("lstm", {}):
        raise ValueError("the training's own error")


def test_params_and_curves_flatten_what_mlflow_can_store() -> None:
    assert flat_params({"model": "lstm", "train": {"lr": 0.005, "dims": [1, 2]}, "x": None}) == {
        "model": "lstm",
        "train.lr": "0.005",
        "train.dims": "[1, 2]",
        "x": "null",
    }
    history = [
        {"epoch": 1, "train_loss": 0.6, "valid_auc": float("nan"), "seconds": 2.0},
        {"iteration": 10, "valid_auc": 0.7},
        {"valid_auc": 0.8},
    ]
    assert curve_points(history, 5) == [
        ("train_loss", 0.6, 5, 1),
        ("seconds", 2.0, 5, 1),
        ("valid_auc", 0.7, 5, 10),
        ("valid_auc", 0.8, 5, 2),
    ]


def test_artifacts_go_where_the_store_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DKT_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("DKT_STORE", raising=False)
    assert artifacts_destination() == (str(tmp_path / "mlflow" / "artifacts"), {})
    monkeypatch.setenv("DKT_STORE", "s3")
    monkeypatch.setenv("DKT_S3_BUCKET", "b")
    monkeypatch.setenv("DKT_S3_PREFIX", "/dkt/")
    monkeypatch.setenv("DKT_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert artifacts_destination() == ("s3://b/dkt/mlflow", {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})


# -- slow: a real tracking server, the real CLI -------------------------------------------------------------


@dataclass
class Server:
    uri: str
    var_dir: Path  # make up's $DKT_VAR_DIR: the SQLite database and the artifacts under mlflow/


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tracking server of ``make up``, started and stopped by the commands mk/mlflow.mk runs
    (``python -m pipeline.mlflow_server up`` / ``down``) from .venv-mlflow, on a free port, state in a temporary
    folder. Fails (never skips) without .venv-mlflow: ``make setup`` / ``make test-setup`` create it."""
    exe = load(MlflowSettings).venv / "bin" / "mlflow"
    assert exe.is_file(), f"{exe} missing: `make mlflow-venv` (part of make setup / test-setup) creates it"
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {
        **os.environ,
        "DKT_VAR_DIR": str(base / "var"),
        "DKT_RUN_DIR": str(base / "run"),
        "DKT_MLFLOW_PORT": str(port),
    }

    def part(action: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pipeline.mlflow_server", action]
        # `up` waits up to 300 s for /health: the first start migrates the SQLite schema, long on a busy machine.
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)

    up = part("up")
    log = base / "run" / "logs" / "mlflow.log"
    try:
        assert up.returncode == 0, up.stderr + (log.read_text()[-3000:] if log.is_file() else "")
        uri = f"http://127.0.0.1:{port}"
        assert f"runs       {uri}" in up.stdout, up.stdout  # the address `make up` prints
        yield Server(uri, base / "var")
    finally:
        pid_file = base / "run" / "pids" / "mlflow.pid"
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        down = part("down")
        assert down.returncode == 0, down.stderr
        assert not pid_file.exists()
        assert pid is None or not pid_alive(pid)  # stopped, not only forgotten (a zombie counts as gone)


@pytest.mark.slow
def test_cli_training_is_recorded_on_a_real_server(mlflow_server: Server, sim_dir: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "bundle"
    uri = mlflow_server.uri
    env = {**os.environ, "DKT_MLFLOW_TRACKING_URI": uri, "DKT_MLFLOW_EXPERIMENT": "test-tracking"}
    argv = [sys.executable, "train.py", "--device", "cpu", "--no-progress", "--config", str(config),
            "--train-file", str(sim_dir / "train.csv"), "--test-file", str(sim_dir / "test.csv"),
            "--output-dir", str(out), "--data-version", "data-v7", "--model-version", "model-v3"]  # fmt: skip
    res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert warnings_of(res.stderr) == [], res.stderr[-3000:]
    assert len(res.stdout.splitlines()) == 1, res.stdout  # the metrics line only: MLflow's run link goes to stderr

    meta = read_meta(out)
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("test-tracking")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert meta["mlflow_run_id"] == run.info.run_id and meta["mlflow_tracking_uri"] == uri
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["model"] == "lstm" and params["train.lr"] == "0.005" and params["model_params.d_model"] == "32"
    assert params["seed"] == "42" and params["device"] == "cpu"

    # One point per epoch for every curve, train and validation, equal to what history.json holds.
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "train_auc", "valid_auc", "valid_loss"):
        points = client.get_metric_history(run.info.run_id, key)
        assert [(p.step, p.value) for p in sorted(points, key=lambda p: p.step)] == [
            (h["epoch"], pytest.approx(h[key])) for h in history
        ], key
    # train AUC from each epoch's own predictions (no second pass): defined, and not the validation curve
    assert all(0.0 < h["train_auc"] < 1.0 and h["train_auc"] != h["valid_auc"] for h in history), history
    assert run.data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])
    assert run.data.metrics["selected_valid_auc"] == pytest.approx(metrics["valid_auc"])  # the chosen epoch's
    assert run.data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])

    tags = run.data.tags
    assert tags["data_version"] == "data-v7" and tags["model_version"] == "model-v3"
    assert tags["code_commit"] == meta["code_commit"] and tags["config_hash"] == meta["config_hash"]
    if meta["code_commit"] != "unknown":
        assert tags["mlflow.source.git.commit"] == meta["code_commit"]
    assert tags["mlflow.runName"] == "lstm"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.json", "history.json"} <= artifacts
    # The server proxies them into the store's folder, as `make up` configures it.
    stored = mlflow_server.var_dir / "mlflow" / "artifacts" / experiment.experiment_id / run.info.run_id / "artifacts"
    assert json.loads((stored / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_failed_training_and_ensemble_members_on_a_real_server(
    mlflow_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No training needed: the runs ``dkt.experiment.run`` opens for an ensemble whose second member raises."""
    from mlflow import MlflowClient

    monkeypatch.setenv("DKT_MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("DKT_MLFLOW_EXPERIMENT", "test-failures")
    with pytest.raises(RuntimeError, match="member diverged"), training_run("ensemble", {"model": "ensemble"}) as top:
        with training_run("lstm", {"model": "lstm"}) as first:
            pass
        with training_run("sakt", {"model": "sakt"}) as second:
            raise RuntimeError("member diverged")
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = {
        r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("test-failures").experiment_id])
    }
    assert {top.run_id, first.run_id, second.run_id} == set(runs)
    assert [runs[r].info.status for r in (top.run_id, first.run_id, second.run_id)] == ["FAILED", "FINISHED", "FAILED"]
    assert runs[first.run_id].data.tags["mlflow.parentRunId"] == top.run_id
    assert runs[second.run_id].data.tags["mlflow.parentRunId"] == top.run_id
    assert runs[second.run_id].data.params == {"model": "sakt"}
    assert "mlflow.parentRunId" not in runs[top.run_id].data.tags
