"""A training run killed with SIGKILL at several points: no half model reaches the store, and the next run trains.

train.py runs as the retrain DAG runs it (a subprocess writing its bundle into the work folder's ``candidate``);
the test kills it from outside at a point it sees in that folder, then pushes the folder as the DAG's next step
would. docs/hardening.md has the whole fault table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dkt.bundle import BUNDLE_FILE, read_meta
from dkt.models.sequence import WEIGHTS_FILE
from models.cli import main as models_cli
from pipeline.store import VersionedStore
from tests.conftest import ROOT, TINY_LSTM
from tests.dkt.test_train_cli import few_users

pytestmark = pytest.mark.slow  # real train.py processes

# Enough epochs that a kill after the first lands inside a later one; patience as long, so none stops early.
LONG = {**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 60, "patience": 60}}
# Where each run is killed: the first file the run writes (config.json: data loaded, the first epoch starting),
# and the first epoch's weights (a model that trained, in a folder that is not a bundle, the run in epoch 2).
KILL_AT = {"epoch 1 (config written, no weights yet)": "config.json", "epoch 2 (epoch 1's weights saved)": WEIGHTS_FILE}


def train(config: Path, train_file: Path, sim_dir: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "train.py", "--config", str(config), "--train-file", str(train_file),
            "--test-file", str(sim_dir / "test.csv"), "--output-dir", str(out), "--device", "cpu", "--no-progress",
            *extra]  # fmt: skip
    # One torch thread: tiny tensors, and a second thread only spins on a loaded CI host (what is tested here is
    # where the run dies, not its speed).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_training_killed_mid_epoch_leaves_no_model_in_the_store_and_the_next_run_trains(
    sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DKT_STORE", "local")
    monkeypatch.setenv("DKT_STORE_ROOT", str(tmp_path / "store"))
    store = VersionedStore.from_env()
    config = tmp_path / "long.json"
    config.write_text(json.dumps(LONG))
    train_file = few_users(sim_dir, tmp_path, 30)  # epochs of a fraction of a second: the kills land in them
    out = tmp_path / "work" / "candidate"  # one folder for every run, as the DAG's retries of its train task use
    seen = []
    for point, marker in KILL_AT.items():
        proc = train(config, train_file, sim_dir, out, "--model-version", "killed")
        deadline = time.monotonic() + 240
        while not (out / marker).exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"train.py never reached {point}"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
        left = sorted(p.name for p in out.iterdir())
        assert BUNDLE_FILE not in left, f"killed in {point}, the folder looks like a bundle: {left}"
        # The DAG's next step pushes the folder: refused with one line, nothing stored.
        assert models_cli(["push", str(out)]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and BUNDLE_FILE in lines[0], err
        assert "Traceback" not in err and store.versions("models") == [] and store.pointed("models", "latest") is None
        seen.append(f"{point}: left {left}, push refused: {lines[0][:120]}")

    # The next run, into the same folder.
    done = train(config, train_file, sim_dir, out, "--model-version", "next", "--epochs", "2")
    stdout, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    assert read_meta(out)["model_version"] == "next" and json.loads(stdout.strip().splitlines()[-1])["test_auc"] > 0.5
    assert models_cli(["push", str(out)]) == 0
    assert [m["version"] for m in store.versions("models")] == ["next"] and store.pointed("models", "latest") == "next"
    print("\n[faults] train.py kill -9 at " + "\n[faults] train.py kill -9 at ".join(seen))
