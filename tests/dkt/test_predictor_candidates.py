"""The batched candidate paths (sequence models, LightGBM) give the generic per-candidate results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dkt.config import parse_config
from dkt.data.io import read_csv
from dkt.experiment import load_run_data, run
from dkt.models.sequence import SequencePredictor
from dkt.predictor import Predictor, load_predictor


@pytest.fixture(scope="module")
def predictor(lstm_bundle: Path) -> SequencePredictor:
    p = load_predictor(lstm_bundle)
    assert isinstance(p, SequencePredictor)
    return p


@pytest.fixture(scope="module")
def jobs(sim_dir: Path) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]]:
    df = read_csv(sim_dir / "test.csv")
    users = df.groupby("userID").size().sort_values(ascending=False).index
    q = pd.read_csv(sim_dir / "questions.csv", dtype={"assessmentItemID": str, "testId": str})
    cands = q[["assessmentItemID", "testId", "KnowledgeTag"]]
    unseen = pd.DataFrame({"assessmentItemID": ["Z1"], "testId": ["Z0"], "KnowledgeTag": [424242]})
    first = df[df["userID"] == users[0]]
    return [
        (first.head(30), cands.sample(12, random_state=1), None),
        (first.head(0), cands.sample(5, random_state=2), None),  # a new student
        (first, pd.concat([cands.sample(7, random_state=3), unseen]), None),  # longer than max_seq_len
        (df[df["userID"] == users[1]].head(3), cands.sample(1, random_state=4), None),
        (first.head(10), cands.sample(4, random_state=5), first["Timestamp"].iloc[9] + pd.Timedelta(hours=5)),
        (first.head(10), cands.sample(4, random_state=6), first["Timestamp"].iloc[4]),  # asked mid-history
        (first.head(10), cands.head(0), None),
    ]


def generic(p: Predictor, history: pd.DataFrame, cands: pd.DataFrame, at: pd.Timestamp | None) -> np.ndarray:
    return p.reference_candidates(history, cands, at)


def test_batched_candidates_match_generic(predictor: SequencePredictor, jobs: list) -> None:
    assert len(jobs[2][0]) > predictor.max_seq_len  # the truncation case is really exercised
    batched = predictor.predict_candidates_batch(jobs)
    for (history, cands, at), got in zip(jobs, batched, strict=True):
        want = generic(predictor, history, cands, at)
        assert got.shape == (len(cands),)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(predictor.predict_candidates(history, cands, at), want, atol=1e-5)


def test_window_path_for_other_sequence_models_matches_generic(lstm_bundle: Path, jobs: list) -> None:
    lstm = load_predictor(lstm_bundle)
    assert isinstance(lstm, SequencePredictor)
    # The LSTM model behind the generic predictor of every sequence kind: its window path, not the LSTM's own.
    p = SequencePredictor(lstm.bundle_dir, lstm.meta, lstm.config, lstm.encoder, lstm.model)
    assert type(p).score_candidate_windows is not type(lstm).score_candidate_windows
    for (history, cands, at), got in zip(jobs, p.predict_candidates_batch(jobs), strict=True):
        np.testing.assert_allclose(got, generic(p, history, cands, at), atol=1e-5)


def test_knowledge_state_uses_catalog(predictor: SequencePredictor, jobs: list) -> None:
    history = jobs[0][0]
    state = predictor.knowledge_state(history)
    assert sorted(state) == sorted(int(t) for t in predictor.catalog)
    cands = predictor.catalog_candidates()
    expected = Predictor.mastery(cands, generic(predictor, history, cands, None))
    assert state == pytest.approx(expected, abs=1e-5)


def test_lgbm_candidates_match_generic(sim_dir: Path, jobs: list, tmp_path_factory: pytest.TempPathFactory) -> None:
    """LightGBM encodes each history once with all its candidates; the one-pseudo-user-per-candidate path agrees."""
    out = tmp_path_factory.mktemp("lgbm") / "lgbm"
    data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
    # One LightGBM thread (its default two only spin on the tests' tiny trees), two folds: any trained model will do.
    params = {"n_estimators": 30, "min_child_samples": 5, "log_every": 0, "n_jobs": 1, "n_folds": 2}
    config = {"model": "lgbm", "model_params": params}
    run(parse_config({**config, "train": {"max_seq_len": 20}}), data, out, device="cpu", seed=1, progress=False)
    p = load_predictor(out)
    assert len(jobs[2][0]) > 3 * p.max_seq_len  # lgbm ignores max_seq_len: features over the whole history
    for (history, cands, at), got in zip(jobs, p.predict_candidates_batch(jobs), strict=True):
        np.testing.assert_allclose(got, generic(p, history, cands, at), atol=1e-9)
