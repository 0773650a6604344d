"""A deliberately worse model for the shadow tests: the session's tiny LSTM trained on shuffled answers.

Shuffling answerCode over the whole training file breaks every link between a student's history and the next
answer, so the model can only learn the overall rate: its AUC on real answers is about 0.5, far below the
session bundle's. Trained once per test run (``made_once``), like the session bundle; test.csv is left real,
so the bundle's own test AUC says how bad it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_LSTM, made_once

SHUFFLED_VERSION = "test-shuffled"


def train_shuffled(sim_dir: Path, out: Path) -> None:
    import numpy as np
    import pandas as pd

    from dkt.config import parse_config
    from dkt.experiment import load_run_data, run

    train = pd.read_csv(sim_dir / "train.csv")
    train["answerCode"] = np.random.default_rng(3).permutation(train["answerCode"].to_numpy())
    train.to_csv(out / "train_shuffled.csv", index=False)
    data = load_run_data(out / "train_shuffled.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
    run(parse_config(TINY_LSTM), data, out / "lstm", device="cpu", seed=1, model_version=SHUFFLED_VERSION,
        progress=False)  # fmt: skip


def shuffled_bundle_dir(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle's folder, trained on first use in this test run (a module's session fixture calls this)."""
    return made_once(tmp_path_factory, "shuffled_bundle", lambda out: train_shuffled(sim_dir, out)) / "lstm"
