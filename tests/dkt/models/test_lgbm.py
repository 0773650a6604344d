"""LightGBM baseline: it learns, it is causal, its training features never see their own label, bundles round-trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dkt.config import ConfigError, load_config, parse_config
from dkt.data.features import FeatureEncoder
from dkt.data.schema import COLUMNS, validate
from dkt.experiment import RunData, run
from dkt.metrics import auc, evaluate_predictions
from dkt.models.lgbm import LGBMPredictor, parse_params
from dkt.models.lgbm_features import (
    RECENCY,
    STAT_KEYS,
    RunningCounts,
    TargetStats,
    causal_features,
    out_of_fold_stats,
    recency_features,
    serving_stats,
    sort_rows,
)
from dkt.predictor import load_predictor
from dkt.simulate import simulate
from tests.conftest import made_once

REPO = Path(__file__).resolve().parents[3]
# One thread: tests share the machine, and LightGBM's OpenMP threads crawl when cores are oversubscribed.
SMALL = {
    "num_leaves": 15,
    "learning_rate": 0.1,
    "n_estimators": 120,
    "min_child_samples": 20,
    "log_every": 0,
    "n_jobs": 1,
}


def split(df: pd.DataFrame, parts: tuple[float, ...], seed: int) -> list[pd.DataFrame]:
    users = np.random.default_rng(seed).permutation(np.sort(df["userID"].unique()))
    cuts = np.cumsum([round(p * len(users)) for p in parts])[:-1]
    return [validate(df[df["userID"].isin(u)].reset_index(drop=True)) for u in np.split(users, cuts)]


@pytest.fixture(scope="module")
def data() -> RunData:
    sim = simulate(120, seed=3).interactions.loc[:, list(COLUMNS)]
    train, valid, test = split(sim, (0.6, 0.2, 0.2), seed=0)
    return RunData(train, valid, test, {"train_file": "t", "test": "s"})


@pytest.fixture(scope="module")
def bundle(data: RunData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Trained once per run, whichever xdist worker gets here first; run() returned what metrics.json holds."""

    def train(out: Path) -> None:
        cfg = parse_config({"model": "lgbm", "model_params": SMALL, "train": {"max_seq_len": 500}})
        run(cfg, data, out / "b", seed=7, progress=False)

    out = made_once(tmp_path_factory, "lgbm-module", train) / "b"
    return out, json.loads((out / "metrics.json").read_text())


def item_mean_auc(data: RunData) -> float:
    """A real baseline: each item's training accuracy, blind to the student."""
    p = data.train.groupby("assessmentItemID")["answerCode"].mean()
    pred = data.test["assessmentItemID"].map(p).fillna(data.train["answerCode"].mean()).to_numpy()
    return auc(data.test["answerCode"].to_numpy(), pred)


def test_learns_beyond_item_difficulty(bundle: tuple[Path, dict[str, Any]], data: RunData) -> None:
    _, metrics = bundle
    baseline = item_mean_auc(data)
    assert metrics["test_auc"] > 0.7
    assert metrics["test_auc"] > baseline + 0.02, (metrics["test_auc"], baseline)
    assert metrics["valid_auc"] > 0.7
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= SMALL["n_estimators"]


def test_bundle_round_trip(bundle: tuple[Path, dict[str, Any]], data: RunData) -> None:
    out, metrics = bundle
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["kind"] == "lgbm" and meta["model"] == "lgbm"
    assert meta["n_params"] == metrics["n_params"] > 0
    assert (out / "model.lgb").is_file() and (out / "lgbm_stats.json").is_file()
    pred = load_predictor(out)
    assert isinstance(pred, LGBMPredictor)
    p1 = pred.predict_rows(data.test)
    p2 = load_predictor(out).predict_rows(data.test)
    np.testing.assert_array_equal(p1, p2)
    assert evaluate_predictions(data.test, p1, prefix="test_")["test_auc"] == pytest.approx(metrics["test_auc"])
    assert json.loads((out / "metrics.json").read_text())["test_auc"] == pytest.approx(metrics["test_auc"])
    # Row order of the input does not matter: predictions follow their rows.
    shuffled = data.test.sample(frac=1.0, random_state=1)
    np.testing.assert_allclose(pred.predict_rows(shuffled), p1[shuffled.index.to_numpy()])
    # predict_last scores each user's last answer exactly as predict_rows does.
    last = pred.predict_last(data.test)
    idx = data.test.sort_values(["userID", "Timestamp"], kind="stable").groupby("userID").tail(1)
    np.testing.assert_allclose(last.loc[idx["userID"]].to_numpy(), p1[idx.index.to_numpy()])


def test_predictions_are_causal(bundle: tuple[Path, dict[str, Any]], data: RunData) -> None:
    pred = load_predictor(bundle[0])
    user = data.test["userID"].iloc[0]
    df = data.test[data.test["userID"] == user].sort_values("Timestamp").reset_index(drop=True)
    cut = len(df) // 2
    before = pred.predict_rows(df)
    changed = df.copy()
    changed.loc[cut:, "answerCode"] = 1 - changed.loc[cut:, "answerCode"]
    after = pred.predict_rows(changed)
    np.testing.assert_array_equal(before[: cut + 1], after[: cut + 1])  # row `cut` itself only sees earlier answers
    assert not np.allclose(before[cut + 1 :], after[cut + 1 :])  # ... and later rows do depend on history
    # Rows still to be predicted (-1) score like any other and do not move earlier rows either.
    hidden = df.copy()
    hidden.loc[cut:, "answerCode"] = -1
    np.testing.assert_array_equal(pred.predict_rows(hidden)[: cut + 1], before[: cut + 1])


def test_recency_features_read_the_order_of_earlier_answers() -> None:
    """Two students: skill A right, A wrong, B right, (B unanswered), A right; then a new student, whose first row
    knows nothing. The row that matters, the last A, by hand."""
    group = np.array([0, 0, 0, 0, 0, 1])
    tag = np.array(["A", "A", "B", "B", "A", "A"], dtype=object)
    answer = np.array([1, 0, 1, -1, 1, 0])
    f = pd.DataFrame(recency_features(group, tag, answer))
    assert list(f.columns) == list(RECENCY)
    last_a = f.iloc[4]
    assert (last_a["tag_last"], last_a["tag_last2"], np.isnan(last_a["tag_last3"])) == (0.0, 1.0, True)
    assert last_a["tag_streak"] == -1.0  # one wrong answer in a row on A
    assert last_a["tag_gap"] == 2.0  # two labelled answers since A's last (the unanswered B counts for nothing)
    assert last_a["tag_ewm"] == pytest.approx((0.5 * 1 + 0) / (0.5 + 1))
    assert last_a["user_streak"] == 1.0  # B right
    assert last_a["user_ewm"] == pytest.approx((0.81 * 1 + 0.9 * 0 + 1) / (0.81 + 0.9 + 1))
    # The unanswered B row sees B's one right answer; it moves nothing for the rows after it.
    assert (f.iloc[3]["tag_last"], f.iloc[3]["tag_streak"], f.iloc[3]["tag_gap"]) == (1.0, 1.0, 1.0)
    assert f.iloc[0].isna().all() and f.iloc[5].isna().all()  # first answers: nothing before them
    assert f.iloc[2][["tag_last", "tag_gap"]].isna().all() and f.iloc[2]["user_streak"] == -1.0


def test_running_counts_step_to_the_batch_features_bit_for_bit(data: RunData) -> None:
    """What the service steps (``RunningCounts.after``) and builds in one pass (``RunningCounts.of``) give each row
    the features the batch pass gives it, NaNs in the same places, for a student with unanswered rows: the recency
    columns bit for bit, the rest to float rounding (the batch's exclusive sums are a cumulative sum minus the row)."""
    encoder = FeatureEncoder.fit(data.train)
    stats = TargetStats.fit(sort_rows(encoder, data.train).raw, sort_rows(encoder, data.train).answer)
    user = data.test["userID"].value_counts().index[0]
    hist = data.test[data.test["userID"] == user].sort_values("Timestamp").reset_index(drop=True)
    hist.loc[[4, 9, 10], "answerCode"] = -1
    rows = sort_rows(encoder, hist)
    per_row = serving_stats(rows, stats, 10.0)
    batch = causal_features(rows, per_row)
    assert len(hist) > 30 and batch[list(RECENCY)].notna().any().all()

    def row(i: int) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Row i as a candidate: its encoder features, its keys and its statistics."""
        stats_i = {k: (p[i : i + 1], n[i : i + 1]) for k, (p, n) in per_row.items()}
        return rows.base.iloc[i : i + 1].reset_index(drop=True), {k: v[i : i + 1] for k, v in rows.raw.items()}, stats_i

    counts = RunningCounts()
    for i in range(len(hist)):
        stepped = counts.features(*row(i))
        expected = batch.iloc[i : i + 1].reset_index(drop=True)
        pd.testing.assert_frame_equal(stepped[list(RECENCY)], expected[list(RECENCY)], check_exact=True)
        pd.testing.assert_frame_equal(stepped, expected, check_exact=False, rtol=1e-12, atol=0)
        if i == len(hist) // 2:
            p_item = per_row["item"][0]
            one_pass = RunningCounts.of({k: v[:i] for k, v in rows.raw.items()}, rows.answer[:i], p_item[:i])
            pd.testing.assert_frame_equal(one_pass.features(*row(i)), stepped, check_exact=True)
        raw_i = {k: str(v[i]) for k, v in rows.raw.items()}
        counts = counts.after(raw_i, int(rows.answer[i]), float(per_row["item"][0][i]))


def training_features(df: pd.DataFrame, encoder: FeatureEncoder) -> tuple[pd.DataFrame, np.ndarray]:
    rows = sort_rows(encoder, df)
    return causal_features(rows, out_of_fold_stats(rows, n_folds=5, prior_weight=10.0, seed=0)), rows.order


def test_training_features_do_not_see_own_label(data: RunData) -> None:
    df = data.train
    encoder = FeatureEncoder.fit(df)
    base, order = training_features(df, encoder)
    rng = np.random.default_rng(0)
    for row in rng.choice(len(df), 5, replace=False):
        flipped = df.copy()
        flipped.loc[row, "answerCode"] = 1 - flipped.loc[row, "answerCode"]
        feats, order2 = training_features(flipped, encoder)
        np.testing.assert_array_equal(order, order2)
        pos = int(np.flatnonzero(order == row)[0])
        pd.testing.assert_series_equal(base.iloc[pos], feats.iloc[pos])
        # The flip is visible elsewhere (later rows of the user, other folds' statistics): the check has teeth.
        assert not base.equals(feats)


def test_in_sample_statistics_would_leak(data: RunData) -> None:
    """Guard for the test above: statistics fitted on all rows *do* carry a row's own label."""
    df = data.train
    rows = sort_rows(FeatureEncoder.fit(df), df)
    row = 0
    flipped = rows.answer.copy()
    flipped[row] = 1 - flipped[row]
    before = TargetStats.fit(rows.raw, rows.answer).lookup("item", rows.raw["item"][:1], 10.0)[0]
    after = TargetStats.fit(rows.raw, flipped).lookup("item", rows.raw["item"][:1], 10.0)[0]
    assert before[0] != after[0]
    assert set(STAT_KEYS) == {"item", "test", "tag"}


def test_bad_params_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"num_leaf.*\n.*known: num_leaves"):
        parse_params({"num_leaf": 8})
    with pytest.raises(ConfigError, match=r"model_params\.learning_rate"):
        parse_params({"learning_rate": -0.1})
    with pytest.raises(ConfigError, match=r"model_params\.n_jobs"):
        parse_params({"n_jobs": "many"})


def test_repo_config_is_valid() -> None:
    cfg = load_config(REPO / "config" / "lgbm.json")
    assert cfg.model == "lgbm"
    assert parse_params(cfg.model_params).n_jobs <= 2  # shared CI machines: stay within two threads


@pytest.mark.slow  # a fresh interpreter importing torch: seconds, not milliseconds
def test_cli_rejects_bad_params_with_exit_2(tmp_path: Path, data: RunData) -> None:
    fmt = "%Y-%m-%d %H:%M:%S"
    few = data.train[data.train["userID"].isin(data.train["userID"].unique()[:5])]  # enough users to split
    few.to_csv(tmp_path / "train.csv", index=False, date_format=fmt)
    data.test.head(100).to_csv(tmp_path / "test.csv", index=False, date_format=fmt)
    (tmp_path / "bad.json").write_text(json.dumps({"model": "lgbm", "model_params": {"leaves": 4}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(tmp_path / "bad.json"), "--no-progress",
         "--train-file", str(tmp_path / "train.csv"), "--test-file", str(tmp_path / "test.csv"),
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    # Named when the config is read: before any data loads, so nothing is written to the output folder.
    assert "bad.json: invalid config" in proc.stderr and "lgbm: invalid model_params" in proc.stderr
    assert "leaves" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
