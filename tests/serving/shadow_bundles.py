"""A deliberately worse model for the shadow tests: the session's tiny LSTM trained on inverted answers.

Every answerCode of the training file flipped (right <-> wrong): the model learns the data's own regularities
backwards, so on answers like the training data's its AUC is well below 0.5, far below the session bundle's,
whatever items the page happens to pick. (A model trained on shuffled answers is not reliably worse online: on
the page's adaptively chosen questions it scored 0.61 against the good model's 0.59 in the acceptance test.)
Trained once per test run (``made_once``), like the session bundle; test.csv is left as it is, so the bundle's
own test AUC says how bad it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_LSTM, made_once

INVERTED_VERSION = "test-inverted"


def train_inverted(sim_dir: Path, out: Path) -> None:
    import pandas as pd

    from dkt.config import parse_config
    from dkt.experiment import load_run_data, run

    train = pd.read_csv(sim_dir / "train.csv")
    train["answerCode"] = 1 - train["answerCode"]
    train.to_csv(out / "train_inverted.csv", index=False)
    data = load_run_data(out / "train_inverted.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
    run(parse_config(TINY_LSTM), data, out / "lstm", device="cpu", seed=1, model_version=INVERTED_VERSION,
        progress=False)  # fmt: skip


def inverted_bundle_dir(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle's folder, trained on first use in this test run (a module's session fixture calls this)."""
    return made_once(tmp_path_factory, "inverted_bundle", lambda out: train_inverted(sim_dir, out)) / "lstm"
