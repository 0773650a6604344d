"""MLflow tracking of training runs (dkt/tracking.py): a real ``mlflow server`` (from .venv-mlflow, SQLite, the
command ``make up`` runs) records what train.py trained, read back through MlflowClient; without a server, or with
one that fails, training goes on with one warning line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from dkt.bundle import read_meta
from dkt.settings import MlflowSettings, load
from dkt.tracking import curve_points, flat_params, training_run
from pipeline.mlflow_server import server_argv
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


# -- slow: a real tracking server, the real CLI -------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` as ``make up`` starts it (pipeline/mlflow_server.server_argv), on a free port, SQLite and
    artifacts in a temporary folder. Fails (never skips) without .venv-mlflow: ``make test-setup`` makes it."""
    exe = load(MlflowSettings).venv / "bin" / "mlflow"
    assert exe.is_file(), f"{exe} missing: `make mlflow-venv` (part of make setup / test-setup) creates it"
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (state / "server.log").open("wb")
    argv = server_argv(exe, port, state / "mlflow.db", str(state / "artifacts"))
    proc = subprocess.Popen(argv, cwd=state, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # the first start migrates the SQLite schema: long on a busy machine
    try:
        while True:
            assert proc.poll() is None, f"mlflow server exited {proc.returncode}: {(state / 'server.log').read_text()}"
            try:
                if requests.get(f"{uri}/health", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass  # not listening yet, or slow under load: until the deadline
            assert time.monotonic() < deadline, f"no /health in 300 s: {(state / 'server.log').read_text()[-3000:]}"
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_cli_training_is_recorded_on_a_real_server(mlflow_server: str, sim_dir: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "bundle"
    env = {**os.environ, "DKT_MLFLOW_TRACKING_URI": mlflow_server, "DKT_MLFLOW_EXPERIMENT": "test-tracking"}
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
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("test-tracking")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert meta["mlflow_run_id"] == run.info.run_id and meta["mlflow_tracking_uri"] == mlflow_server
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["model"] == "lstm" and params["train.lr"] == "0.005" and params["model_params.d_model"] == "32"
    assert params["seed"] == "42" and params["device"] == "cpu"

    # One point per epoch for every curve, equal to what history.json holds.
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "valid_auc", "valid_loss"):
        points = client.get_metric_history(run.info.run_id, key)
        assert [(p.step, p.value) for p in sorted(points, key=lambda p: p.step)] == [
            (h["epoch"], pytest.approx(h[key])) for h in history
        ], key
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
