"""The time rule, end to end: no sequence model trained on shown-at timestamps beats the simulator's oracle.

The simulator's response times depend on correctness (wrong answers are slower), so a model that saw
item t's own response time would read part of its answer off it. The oracle AUC (the true
probabilities) bounds every honest model on the same test rows; the second test shows the bound has
teeth: with answered-at timestamps (the old semantics) an LSTM goes above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from dkt.config import load_config
from dkt.data.schema import COLUMNS, validate
from dkt.experiment import RunData, run
from dkt.metrics import auc
from dkt.simulate import answered_at, simulate, split_users
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # trains six models: about 2-2.5 minutes on two busy cores

SEQUENCE_KINDS = ("lstm", "lstmattn", "bert", "saint", "dkvmn")
USERS = 120  # ~19k answers: enough for two epochs to learn, and for the leak to show
EPOCHS = 2


@dataclass
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    oracle_auc: float

    def run_data(self, leaky: bool = False) -> RunData:
        parts = [answered_at(p) if leaky else p for p in (self.train, self.valid, self.test)]
        frames = [
            validate(p.loc[:, list(COLUMNS)], name) for p, name in zip(parts, ("train", "valid", "test"), strict=True)
        ]
        return RunData(*frames, fingerprints={"train_file": "sim", "test": "sim"})


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread: None) -> None:
    """Small models: a second intra-op thread only adds sync cost on a busy CPU."""


@pytest.fixture(scope="module")
def split() -> Split:
    sim = simulate(USERS, seed=5)
    rest, test = split_users(sim.interactions, 0.25, seed=0)
    train, valid = split_users(rest, 0.2, seed=1)
    return Split(train, valid, test, auc(test["answerCode"].to_numpy(), test["p_true"].to_numpy()))


def train_auc(kind: str, data: RunData, out: Path, epochs: int = EPOCHS) -> float:
    metrics = run(
        load_config(ROOT / "config" / f"{kind}.json"), data, out, epochs=epochs, device="cpu", seed=1, progress=False
    )
    return float(metrics["test_auc"])


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_no_sequence_model_beats_the_oracle_on_shown_at_times(kind: str, split: Split, tmp_path: Path) -> None:
    model_auc = train_auc(kind, split.run_data(), tmp_path / kind)
    print(f"{kind}: test AUC {model_auc:.4f}, oracle {split.oracle_auc:.4f}")
    assert model_auc > 0.6, "the model learned nothing: the bound below would say nothing either"
    assert model_auc < split.oracle_auc


def test_answered_at_times_leak_and_lift_a_model_above_the_oracle(split: Split, tmp_path: Path) -> None:
    """Without this, the test above could pass because the models are weak, not because nothing leaks."""
    model_auc = train_auc("lstm", split.run_data(leaky=True), tmp_path / "lstm-leaky", epochs=5)
    print(f"lstm on answered-at times: test AUC {model_auc:.4f}, oracle {split.oracle_auc:.4f}")
    assert model_auc > split.oracle_auc + 0.02
