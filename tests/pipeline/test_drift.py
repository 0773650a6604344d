"""Drift reports (pipeline/drift.py): PSI against hand-computed values, the retrain decision, the report stored
beside its data version in a real store with production's AUC from its real bundle, and `dkt data drift`'s errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.cli import main as data_cli
from dkt.cli import EXIT_SKIP
from dkt.data.io import read_csv
from models.cli import main as models_cli
from pipeline import drift
from pipeline.store import VersionedStore

# Two bins, shares (0.5, 0.5) -> (0.75, 0.25): 0.25 ln 1.5 + 0.25 ln 2.
PSI_HALF_TO_QUARTER = 0.25 * math.log(1.5) + 0.25 * math.log(2.0)


def test_psi_matches_hand_computed_values() -> None:
    assert drift.psi_from_counts(np.array([2, 2]), np.array([3, 1])) == pytest.approx(PSI_HALF_TO_QUARTER)
    assert drift.psi_from_counts(np.array([5, 5]), np.array([1, 1])) == 0.0
    # Quantile bins of the reference: [1, 2, 3, 4] in 2 bins splits at 2.5; a value on an edge goes up.
    assert drift.numeric_psi(np.array([1, 2, 3, 4.0]), np.array([1, 1, 1, 4.0]), bins=2) == pytest.approx(
        PSI_HALF_TO_QUARTER
    )
    assert drift.numeric_psi(np.array([1, 2, 3, 4.0]), np.array([2, 2.5, 1, 4.0]), bins=2) == 0.0  # 2.5: upper
    # NaN (a first answer has no response time) is left out; nothing left means no PSI.
    assert drift.numeric_psi(np.array([1, 2, np.nan, 3, 4.0]), np.array([1, 1, 1, 4.0, np.nan]), bins=2) == (
        pytest.approx(PSI_HALF_TO_QUARTER)
    )
    assert math.isnan(drift.numeric_psi(np.array([1.0]), np.array([np.nan])))
    # A category the reference never saw: its share there is floored at 1e-4, a large but finite shift.
    ref, new = pd.Series(list("aabb")), pd.Series(list("abcc"))
    by_hand = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert drift.categorical_psi(ref, new) == pytest.approx(by_hand)
    assert drift.categorical_psi(pd.Series(list("aabb")), pd.Series(list("aaab"))) == pytest.approx(PSI_HALF_TO_QUARTER)


def test_many_categories_pool_into_groups_of_equal_reference_share() -> None:
    ref = pd.Series(["a"] * 4 + ["b"] * 2 + ["c", "d"])
    # Most answered first; share before each: a 0, b 0.5, c 0.75, d 0.875 -> two groups of half the answers.
    assert drift.category_groups(ref, max_bins=2) == {"a": 0, "b": 1, "c": 1, "d": 1}
    assert drift.category_groups(ref, max_bins=4) == {"a": 0, "b": 1, "c": 2, "d": 3}
    # Moving answers between b, c and d (one group) is no shift at two bins; moving them to a is.
    assert drift.categorical_psi(ref, pd.Series(["a"] * 4 + ["d"] * 4), max_bins=2) == 0.0
    assert drift.categorical_psi(ref, pd.Series(["a"] * 6 + ["b"] * 2), max_bins=2) == pytest.approx(
        PSI_HALF_TO_QUARTER
    )


def test_answer_features_response_time_and_history_length() -> None:
    t0 = pd.Timestamp("2024-01-01 10:00:00")
    df = pd.DataFrame(
        {
            "userID": ["u", "v", "u", "u", "v"],
            "assessmentItemID": ["A1", "A2", "A3", "A4", "A5"],
            "answerCode": [1, 0, 1, 0, 1],
            "KnowledgeTag": [1, 2, 1, 3, 2],
            "Timestamp": [t0, t0, t0 + pd.Timedelta(seconds=30), t0 + pd.Timedelta(seconds=1030), t0],
        }
    )
    got = drift.answer_features(df)
    assert got["history_length"].tolist() == [0, 0, 1, 2, 1]  # v's two answers at one time: file order
    # Seconds since the student's previous item was shown, capped at 600 s like the model's feature.
    assert got["response_time_s"].tolist()[1:] == [pytest.approx(np.nan, nan_ok=True), 30.0, 600.0, 0.0]
    assert math.isnan(got["response_time_s"].iloc[0])


@pytest.fixture(scope="module")
def answers(sim_dir: Path) -> pd.DataFrame:
    return read_csv(sim_dir / "train.csv")


def test_same_data_has_zero_psi_and_no_retrain(answers: pd.DataFrame) -> None:
    rows = drift.answer_features(answers)
    report = drift.compare(rows, rows, threshold=0.2, min_answers=200)
    assert {f: d["psi"] for f, d in report["features"].items()} == dict.fromkeys(drift.FEATURES, 0.0)
    assert report["max_psi"] == 0.0 and report["retrain"] is False
    assert "< DKT_DRIFT_PSI_THRESHOLD=0.2" in report["reason"]
    # Threshold 0: every new version retrains; too few answers never do; no production always does.
    assert drift.compare(rows, rows, threshold=0.0, min_answers=200)["retrain"] is True
    assert drift.compare(rows, rows.head(50), threshold=0.0, min_answers=200)["retrain"] is False
    assert drift.compare(rows, rows.head(50), threshold=0.2, min_answers=200, has_production=False)["retrain"]


def test_shifted_answer_rate_or_item_mix_crosses_the_threshold(answers: pd.DataFrame) -> None:
    ref = drift.answer_features(answers)
    users = answers["userID"].unique()
    half = answers[answers["userID"].isin(users[: len(users) // 2])]
    same = drift.compare(ref, drift.answer_features(half), threshold=0.2, min_answers=200)
    assert same["retrain"] is False and same["max_psi"] < 0.2  # a sample of the same students: no drift

    flipped = half.assign(answerCode=1 - half["answerCode"])
    got = drift.compare(ref, drift.answer_features(flipped), threshold=0.2, min_answers=200)
    assert got["features"]["answer_rate"]["psi"] > 0.2 and got["max_feature"] == "answer_rate"
    assert got["retrain"] is True and got["reason"].startswith("answer_rate PSI")
    assert got["features"]["answer_rate"]["new"] == pytest.approx(1 - same["features"]["answer_rate"]["new"])

    # The same answers, all on the items of one KnowledgeTag: the item and tag mix move, the answer rate less.
    tag = answers["KnowledgeTag"].mode().iloc[0]
    narrow = half[half["KnowledgeTag"] == tag]
    got = drift.compare(ref, drift.answer_features(narrow), threshold=0.2, min_answers=100)
    assert got["features"]["item_mix"]["psi"] > 0.2 and got["features"]["tag_mix"]["psi"] > 0.2
    assert got["retrain"] is True


def push_version(folder: Path, df: pd.DataFrame, test: pd.DataFrame, version: str) -> None:
    folder.mkdir(parents=True)
    df.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    assert data_cli(["push", str(folder), "--version", version]) == 0


def later_students(answers: pd.DataFrame, n_users: int, flip: bool) -> pd.DataFrame:
    """New students a week later, answering as the first ``n_users`` did (or the opposite of it)."""
    users = answers["userID"].unique()[:n_users]
    new = answers[answers["userID"].isin(users)].copy()
    new["userID"] = "later-" + new["userID"]
    new["Timestamp"] = new["Timestamp"] + pd.Timedelta(days=7)
    if flip:
        new["answerCode"] = 1 - new["answerCode"]
    return new


@pytest.fixture
def production(store: VersionedStore, lstm_bundle: Path, sim_dir: Path, tmp_path: Path) -> pd.DataFrame:
    """The store with data version d1 (the simulated set) and production trained on it (bundle says so)."""
    push_version(tmp_path / "d1", read_csv(sim_dir / "train.csv"), read_csv(sim_dir / "test.csv"), "d1")
    bundle = tmp_path / "bundle"
    shutil.copytree(lstm_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**meta, "data_version": "d1"}))
    assert models_cli(["push", str(bundle), "--promote"]) == 0
    return read_csv(sim_dir / "train.csv")


# S3 only: the report goes through the same BlobStore calls on both backends; moto over HTTP is the real-store case.
@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_drift_report_stored_beside_the_data_version(
    store: VersionedStore,
    production: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    test = read_csv(tmp_path / "d1" / "test.csv")
    flipped = later_students(production, 20, flip=True)
    push_version(tmp_path / "d2", pd.concat([production, flipped]), test, "d2")

    assert data_cli(["drift", "--run-id", "manual__1"]) == 0  # the DAG step: crossed, so the asset is emitted
    out, err = capsys.readouterr()
    assert "retrain: yes (answer_rate PSI" in out and "stored " in err and "drift.json" in err
    report = drift.read_report(store, "d2")
    assert report is not None and report["data_version"] == "d2" and report["reference_version"] == "d1"
    assert report["reference"] == "production's training data" and report["production_version"] == "test-v1"
    assert report["new_answers"] == len(flipped) and report["reference_answers"] == len(production)
    assert report["retrain"] is True and report["max_psi"] >= report["threshold"] == 0.2
    # Production scored through its bundle: on answers that are the opposite of what it learnt, below chance.
    auc = report["production_auc"]
    assert auc["n"] == len(flipped) and auc["auc"] < 0.5
    assert drift.read_report(store, "d1") is None
    # The version itself is untouched: it still pulls and verifies, and the report is not one of its files.
    assert "drift.json" not in store.pull("datasets", "d2", tmp_path / "pulled")["files"]

    # Students like the ones production trained on: below the threshold, no retraining (exit 99: skipped).
    like = later_students(production, 20, flip=False).assign(userID=lambda d: d["userID"] + "-b")
    push_version(tmp_path / "d3", pd.concat([production, flipped, like]), test, "d3")
    capsys.readouterr()
    assert data_cli(["drift", "--run-id", "manual__2", "--json"]) == EXIT_SKIP
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed == drift.read_report(store, "d3")
    assert printed["retrain"] is False and printed["new_answers"] == len(flipped) + len(like)
    assert "skip: no retraining: max PSI" in err
    # Against d2 as the reference (its train.csv holds the flipped students), only `like` is new.
    assert data_cli(["drift", "d3", "--reference", "d2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_answers"] == len(like)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["drift", "nosuch"], "no complete datasets version 'nosuch'"),
        (["drift", "d1", "--reference", "../up"], "bad version name '../up'"),
        (["drift", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_drift_command_errors(
    argv: list[str],
    message: str,
    tmp_path: Path,
    sim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DKT_STORE", "local")
    monkeypatch.setenv("DKT_STORE_ROOT", str(tmp_path / "store"))
    assert data_cli(["drift"]) == 2
    assert capsys.readouterr().err.strip().endswith(": no datasets version is 'latest' yet")
    assert data_cli(["push", str(sim_dir), "--version", "d1"]) == 0
    capsys.readouterr()
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def run_cli(argv: list[str]) -> int:
    """``dkt data`` as the command line runs it: argparse's refusals exit (SystemExit) instead of returning."""
    try:
        return data_cli(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
