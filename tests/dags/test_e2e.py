"""End to end: students answer through the real client, then the three DAGs run in order with `airflow dags test`
on a store in a real S3 endpoint (moto over HTTP), and the service switches to the new model with no failed student
request. One run proves both the students' loop and the three DAGs on S3 (they were two runs of the same DAGs).
The local store backend is proven by tests/pipeline's store tests, which run every store operation on both."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dkt.cli import main as dkt_main
from pipeline import deploy
from pipeline.store import VersionedStore
from tests.conftest import TINY_LSTM
from tests.dags.airflow_runner import AirflowCLI
from tests.dags.polling import request
from tests.pipeline.s3server import moto_server
from tests.support.ports import free_port, free_port_pair
from tests.support.students import answering, client_server, run_students


class Phases:
    """Wall seconds per phase, printed with the test's output (shown on failure, or with -s)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.rows: list[str] = []

    def done(self, what: str) -> None:
        now = time.monotonic()
        self.rows.append(f"{now - self.last:6.1f} s  {what}")
        self.last = now

    def __str__(self) -> str:
        return "\n".join(["[e2e] phases:", *self.rows])


def dkt(*argv: str) -> None:
    """A `dkt` command in this process, as the DAG tasks' `python -m dkt ...` runs it, without the 1.5-2.5 CPU-s
    start-up of a process of its own (the settings are read from the environment on each call)."""
    rc = dkt_main(list(argv))
    assert rc == 0, f"dkt {' '.join(argv)} exited with {rc}"


@pytest.mark.slow
def test_students_then_three_dags_on_s3_then_new_model_served(
    sim_dir: Path, lstm_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with moto_server(tmp_path / "moto.log") as s3:
        students_then_three_dags(s3.env(prefix="e2e"), sim_dir, lstm_bundle, tmp_path, monkeypatch)


def students_then_three_dags(
    store_env: dict[str, str], sim_dir: Path, lstm_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 1}}))
    client_port = free_port()
    env = {
        **store_env,
        "DKT_WORK_ROOT": str(tmp_path / "work"),
        "DKT_RUN_DIR": str(tmp_path / "run"),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "DKT_SERVE_PORT": str(free_port_pair()),
        "DKT_INFERENCE_URL_FILE": str(tmp_path / "run" / "inference_url"),
        "DKT_CLIENT_DB": str(tmp_path / "client.db"),
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "DKT_SECRET_KEY": "e2e-test-only",
        "DKT_TRAIN_CONFIG": str(config),
        "DKT_TRAIN_CANDIDATES": str(config),  # one kind: choosing among several is tested in tests/pipeline
        "DKT_PROMOTE_TOLERANCE": "1.0",  # this test is about the loop; promotion rules are tested apart
        "DKT_DRAIN_SECONDS": "2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    full = {**os.environ, **env}
    phases = Phases()
    with AirflowCLI(tmp_path / "airflow", env, tmp_path / "airflow-cli.log") as airflow:
        # Airflow's database and start-up (the in-process execution API `dags test` runs tasks through) get
        # ready in the background while the store and the first model's service are set up.
        airflow.start(["db", "migrate"], tmp_path / "migrate.log")
        airflow.start(["warm"], tmp_path / "warm.log")
        try:  # from here on a server may run: the inference service is stopped whatever happens
            # The seed and the first model, set up in this process: what the DAGs do after is the test.
            dkt("data", "push", str(sim_dir), "--version", "seed")
            dkt("models", "push", str(lstm_bundle), "--promote")
            for step in ("pull-model", "pack", "deploy", "verify"):
                dkt("deploy", step, "--run-id", "initial")
            phases.done("seed data and first model pushed, packed, served (Airflow migrating and warming meanwhile)")
            with client_server(full, client_port, tmp_path / "client.log", timeout=180) as base:
                first = run_students(base, sim_dir / "questions.csv", n_students=5, answers_each=8, seed=1)
                assert first.failed == 0, first.errors
                assert first.answers == 40
                phases.done("client started, 40 answers")

                airflow.dags_test("update_data_dag", tmp_path / "update.log")
                store = VersionedStore.from_env()
                data_v = store.pointed("datasets", "latest")
                assert store.manifest("datasets", data_v)["added_rows"] == 40
                assert store.get_state("watermark")["watermark"] == "40"
                phases.done("update_data_dag")

                airflow.dags_test("retrain_and_push_dag", tmp_path / "retrain.log")
                new_v = store.pointed("models", "production")
                assert new_v != "test-v1"
                # Trained on what update_data published.
                assert store.manifest("models", new_v)["data_version"] == data_v
                phases.done("retrain_and_push_dag")

                with answering(base, sim_dir / "questions.csv", seed=100) as during:
                    airflow.dags_test("update_inference_server_dag", tmp_path / "deploy.log", timeout=600)
                phases.done(f"update_inference_server_dag, {during.answers} answers meanwhile ({during.failed} failed)")
                assert during.answers > 0
                assert during.failed == 0, during.errors
                url = (tmp_path / "run" / "inference_url").read_text().strip()
                meta = request(None, "GET", url + "/metadata", logs=[tmp_path / "deploy.log"]).json()
                assert meta["model_version"] == new_v and meta["data_version"] == data_v
                after = run_students(base, sim_dir / "questions.csv", n_students=1, answers_each=3, seed=9,
                                     prefix="after")  # fmt: skip
                assert after.failed == 0 and after.answers == 3

                # The fourth DAG, in Airflow: a shadow set but no answers it scored yet (it is not served here),
                # so the gate waits (exit 99: task skipped, run a success) and moves nothing.
                dkt("models", "shadow", "test-v1")
                log = airflow.dags_test("promote_shadow_dag", tmp_path / "promote-shadow.log")
                assert "skip: waiting: 0 of the" in log and "explored answers scored by both" in log
                assert store.pointed("models", "production") == new_v
                assert store.pointed("models", "shadow") == "test-v1"
                phases.done("promote_shadow_dag (waiting)")
        finally:
            deploy.stop_local()
            print(phases)
