"""retrain_and_push_dag's evaluate / push / promote steps with real bundles on a real store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from dkt.bundle import LINEAGE_KEYS, read_meta
from dkt.config import parse_config
from dkt.experiment import load_run_data, run
from models.cli import main as models_cli
from pipeline import promotions, retrain
from pipeline.dataset import import_initial
from pipeline.store import VersionedStore, manifest_matches
from pipeline.workdir import work_dir
from tests.conftest import ROOT, TINY_LSTM, made_once


@pytest.fixture(scope="session")
def flipped_bundle(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on inverted answers: really worse on the same held-out users (trained once per run;
    tests copy it, see stage)."""

    def train(out: Path) -> None:
        data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
        data.train["answerCode"] = 1 - data.train["answerCode"]
        data.valid["answerCode"] = 1 - data.valid["answerCode"]
        cfg = {**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 1}}
        run(parse_config(cfg), data, out / "b", device="cpu", seed=1, model_version="flipped-v2", progress=False)

    return made_once(tmp_path_factory, "flipped", train) / "b"


def copy_as(bundle: Path, dest: Path, version: str, **meta: object) -> Path:
    """A copy of a bundle under another model version (and other ``bundle.json`` values)."""
    shutil.copytree(bundle, dest)
    doc = json.loads((dest / "bundle.json").read_text())
    (dest / "bundle.json").write_text(json.dumps({**doc, "model_version": version, **meta}))
    return dest


def stage(run_id: str, candidate: Path, sim_dir: Path) -> Path:
    work = work_dir("retrain_and_push", run_id)
    shutil.copytree(candidate, work / "candidate")
    (work / "data").mkdir(parents=True)
    shutil.copy(sim_dir / "test.csv", work / "data" / "test.csv")
    return work


def test_worse_model_is_pushed_but_not_promoted(
    store: VersionedStore,
    lstm_bundle: Path,
    flipped_bundle: Path,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    assert models_cli(["push", str(lstm_bundle), "--promote"]) == 0
    assert store.pointed("models", "production") == "test-v1"
    work = stage("run-1", flipped_bundle, sim_dir)
    for step in ("evaluate", "push-candidate"):
        assert models_cli([step, "--run-id", "run-1"]) == 0
    ev = json.loads((work / "evaluation.json").read_text())
    assert ev["production_version"] == "test-v1"
    assert ev["candidate"]["auc"] < ev["production"]["auc"] - 0.05
    assert ev["candidate"]["n_users"] == ev["production"]["n_users"]  # same held-out users
    assert models_cli(["promote-if-better", "--run-id", "run-1", "--tolerance", "0.01"]) == 99
    # The promote step on the scheduler host, the train tasks on the Edge worker's: no local evaluation,
    # the one stored with the candidate decides the same way.
    (work / "evaluation.json").unlink()
    assert models_cli(["promote-if-better", "--run-id", "run-1", "--tolerance", "0.01"]) == 99
    assert models_cli(["promote-if-better", "--run-id", "other-host", "--tolerance", "0.01"]) == 99
    # No holdout prepared (a staged run, test-v1 names no data version): the held-out users decide, paired.
    figures = ev["gate"]["figures"]
    assert figures["set"].startswith("user-split test set: no ") and figures["n"] == ev["candidate"]["n"]
    assert figures["diff"] == pytest.approx(ev["production"]["auc"] - ev["candidate"]["auc"])
    assert figures["diff_ci95"][0] > 0.01  # shown worse by more than the tolerance
    refusals = promotions.history(store)
    assert [(e["gate"], e["promoted"], e["candidate"]) for e in refusals] == [("holdout", False, "flipped-v2")] * 3
    assert store.pointed("models", "production") == "test-v1"
    assert store.pointed("models", "latest") == "flipped-v2"
    # A person may still choose it, and roll back.
    assert models_cli(["promote", "flipped-v2"]) == 0
    assert store.pointed("models", "production") == "flipped-v2"
    assert models_cli(["rollback"]) == 0
    assert store.pointed("models", "production") == "test-v1"
    moves = [(e["gate"], e["candidate"], e["production"]) for e in promotions.history(store)[:2]]
    assert moves == [("manual", "test-v1", "flipped-v2"), ("manual", "flipped-v2", "test-v1")]


def test_better_or_equal_model_is_promoted(
    store: VersionedStore, lstm_bundle: Path, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    assert models_cli(["push", str(lstm_bundle)]) == 0
    stage("run-2", lstm_bundle, sim_dir)
    # Nothing evaluated yet, here or in the store (a manual push carries no evaluation): refused, not guessed.
    assert models_cli(["promote-if-better", "--run-id", "run-2"]) == 2
    assert store.pointed("models", "production") is None
    # No production yet: the first candidate is promoted.
    assert models_cli(["evaluate", "--run-id", "run-2"]) == 0
    assert models_cli(["push-candidate", "--run-id", "run-2"]) == 0  # already stored: idempotent
    assert models_cli(["promote-if-better", "--run-id", "run-2"]) == 0
    assert store.pointed("models", "production") == "test-v1"
    [first] = promotions.history(store)
    assert first["promoted"] and first["production"] is None and "no production model yet" in first["reason"]
    pulled = tmp_path / "pulled"
    assert models_cli(["pull", "production", "--dest", str(pulled)]) == 0
    assert json.loads((pulled / "bundle.json").read_text())["model_version"] == "test-v1"


def test_candidate_with_a_taken_version_is_refused_not_mistaken_for_a_retry(
    store: VersionedStore,
    lstm_bundle: Path,
    flipped_bundle: Path,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    assert models_cli(["push", str(lstm_bundle), "--promote"]) == 0
    work = stage("run-3", flipped_bundle, sim_dir)
    meta_file = work / "candidate" / "bundle.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "model_version": "test-v1"}))
    assert models_cli(["evaluate", "--run-id", "run-3"]) == 0
    assert models_cli(["push-candidate", "--run-id", "run-3"]) == 2  # other files under test-v1
    assert manifest_matches(store.manifest("models", "test-v1"), lstm_bundle)  # the stored version is untouched


# -- nothing unloadable is promoted ---------------------------------------------------------------
def broken_copy(bundle: Path, dest: Path, version: str, how: str) -> Path:
    """A copy of a good bundle under another version, broken the way disks, bugs and bad data break them."""
    shutil.copytree(bundle, dest)
    meta_file = dest / "bundle.json"
    text = json.dumps({**json.loads(meta_file.read_text()), "model_version": version})
    if how == "garbage-weights":
        (dest / "weights.pt").write_bytes(b"\x00not a torch file\x00" * 64)
    elif how == "nan-weights":  # loads fine, but every probability is NaN
        state = torch.load(dest / "weights.pt", weights_only=True)
        torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
                   dest / "weights.pt")  # fmt: skip
    elif how == "nan-metric":  # what train.py wrote before metrics became null with a reason
        text = text.replace('"test_auc": ', '"test_auc": NaN, "_was": ', 1)
    else:
        raise ValueError(how)
    meta_file.write_text(text)
    return dest


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("garbage-weights", "the model does not load"),
        ("nan-weights", "is not a finite number in [0, 1]"),
        ("nan-metric", "NaN is not a JSON number"),
    ],
)
def test_push_promote_refuses_a_bundle_that_does_not_load_and_score(
    store: VersionedStore, lstm_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, says: str
) -> None:
    bad = broken_copy(lstm_bundle, tmp_path / "bad", "bad-v1", how)
    assert models_cli(["push", str(bad), "--promote"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0] and str(bad) in err[0], err
    assert store.pointed("models", "production") is None and not store.exists("models", "bad-v1")
    assert models_cli(["push", str(lstm_bundle), "--promote"]) == 0  # a good one goes through
    assert store.pointed("models", "production") == "test-v1"


def test_promote_refuses_a_stored_version_that_does_not_load(
    store: VersionedStore, lstm_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_cli(["push", str(lstm_bundle), "--promote"]) == 0
    # A plain push (latest only, never served) may store it: e.g. to keep it for a post-mortem.
    assert models_cli(["push", str(broken_copy(lstm_bundle, tmp_path / "bad", "bad-v2", "garbage-weights"))]) == 0
    capsys.readouterr()
    assert models_cli(["promote", "bad-v2"]) == 2
    err = capsys.readouterr().err
    assert "error: model version bad-v2 cannot be served" in err and "the model does not load" in err
    assert store.pointed("models", "production") == "test-v1"


def test_retrain_dag_never_promotes_a_candidate_that_does_not_load(
    store: VersionedStore,
    lstm_bundle: Path,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    # Broken before evaluation: the evaluate step stops it, nothing is stored.
    stage("run-5", broken_copy(lstm_bundle, tmp_path / "b5", "cand-v5", "nan-weights"), sim_dir)
    assert models_cli(["evaluate", "--run-id", "run-5"]) == 2
    assert "is not a finite number" in capsys.readouterr().err
    # Broken after a good evaluation (a disk, a bad copy): stored, but the promote step checks the stored files.
    good = tmp_path / "good"
    shutil.copytree(lstm_bundle, good)
    meta = json.loads((good / "bundle.json").read_text())
    (good / "bundle.json").write_text(json.dumps({**meta, "model_version": "cand-v6"}))
    work = stage("run-6", good, sim_dir)
    assert models_cli(["evaluate", "--run-id", "run-6"]) == 0
    (work / "candidate" / "weights.pt").write_bytes(b"\x00truncated")
    assert models_cli(["push-candidate", "--run-id", "run-6"]) == 0
    capsys.readouterr()
    assert models_cli(["promote-if-better", "--run-id", "run-6"]) == 2  # a failure, not a skip: someone must look
    assert "model version cand-v6 cannot be served" in capsys.readouterr().err
    assert store.pointed("models", "production") is None


def test_manifest_carries_the_lineage(store: VersionedStore, lstm_bundle: Path) -> None:
    assert models_cli(["push", str(lstm_bundle), "--promote"]) == 0
    meta, manifest = read_meta(lstm_bundle), store.manifest("models", "test-v1")
    assert {k: manifest[k] for k in LINEAGE_KEYS} == {k: meta[k] for k in LINEAGE_KEYS}
    assert manifest["seed"] == 1 and manifest["config_hash"].startswith("sha256:")
    # The tests run from a git checkout (CI clones): the commit is read, never the "unknown" of a bare copy.
    assert (ROOT / ".git").exists() and re.fullmatch(r"[0-9a-f]{40}", manifest["code_commit"]), manifest


# -- the time holdout ----------------------------------------------------------------------------------
def push_dataset(store: VersionedStore, sim_dir: Path, tmp: Path, version: str, before: str | None) -> None:
    """The simulated set as a data version, only its answers before ``before`` if given."""
    src = tmp / f"{version}-src"
    src.mkdir()
    for name in ("train.csv", "test.csv"):
        df = pd.read_csv(sim_dir / name, dtype={"userID": str}, parse_dates=["Timestamp"])
        (df[df["Timestamp"] < pd.Timestamp(before)] if before else df).to_csv(src / name, index=False)
    import_initial(src, tmp / version)
    store.push("datasets", tmp / version, version)


# Local store only: the steps use the store through the calls the S3 tests above cover (20 s against 11 s).
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_holdout_gate_scores_both_models_on_the_newest_answers_neither_trained_on(
    store: VersionedStore,
    lstm_bundle: Path,
    flipped_bundle: Path,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in {"DKT_WORK_ROOT": str(tmp_path / "work"), "DKT_GATE_MIN_ANSWERS": "300",
                 "DKT_GATE_BOOTSTRAP": "200"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    # Production trained on d1 (its lineage says so): the answers before 20 March. d2, the latest, has them all.
    push_dataset(store, sim_dir, tmp_path, "d1", "2020-03-20")
    push_dataset(store, sim_dir, tmp_path, "d2", None)
    assert (
        models_cli(["push", str(copy_as(lstm_bundle, tmp_path / "p", "prod-v1", data_version="d1")), "--promote"]) == 0
    )
    assert models_cli(["pull-data", "--run-id", "run-7"]) == 0
    work = work_dir("retrain_and_push", "run-7")
    holdout = json.loads((work / "gate" / "holdout.json").read_text())
    d1_train = pd.read_csv(tmp_path / "d1" / "train.csv", parse_dates=["Timestamp"])
    d2 = [pd.read_csv(tmp_path / "d2" / n, parse_dates=["Timestamp"]) for n in ("train.csv", "test.csv")]
    everything = pd.concat(d2)
    cutoff = pd.Timestamp(holdout["cutoff"])
    assert holdout["active"], holdout["note"]
    assert pd.Timestamp(holdout["production_trained_until"]) == d1_train["Timestamp"].max() < cutoff
    assert holdout["n"] == (everything["Timestamp"] >= cutoff).sum() >= 300
    assert holdout["n"] >= 0.1 * len(everything) > (everything["Timestamp"] > cutoff).sum()  # the newest 10%
    # The candidate trains without them.
    train = pd.read_csv(work / "gate" / "train.csv", parse_dates=["Timestamp"])
    test = pd.read_csv(work / "gate" / "test.csv", parse_dates=["Timestamp"])
    assert train["Timestamp"].max() < cutoff and test["Timestamp"].max() < cutoff
    assert len(train) + len(test) == len(everything) - holdout["n"]
    assert holdout["candidate_trained_until"] == train["Timestamp"].max().strftime("%Y-%m-%d %H:%M:%S")

    # The train step's choice between candidate kinds, on the time holdout: the model trained on inverted answers
    # (better on its own validation users, which are inverted too) loses to the real one, listed after it.
    copy_as(flipped_bundle, work / "candidates" / "1-flipped", "cand-v7")
    copy_as(lstm_bundle, work / "candidates" / "2-lstm", "cand-v7")
    chosen = retrain.select(work)
    assert chosen["winner"] == "2-lstm" and chosen["by"].startswith("AUC on the time holdout")
    flipped, real = (row["score"] for row in chosen["candidates"])
    assert flipped < 0.5 < 0.6 < real
    assert (work / "candidate" / "weights.pt").read_bytes() == (lstm_bundle / "weights.pt").read_bytes()
    assert models_cli(["evaluate", "--run-id", "run-7"]) == 0
    assert json.loads((work / "evaluation.json").read_text())["selection"] == chosen
    figures = json.loads((work / "evaluation.json").read_text())["gate"]["figures"]
    assert figures["set"].startswith("time holdout: ") and figures["n"] == holdout["n"]
    assert figures["cutoff"] == holdout["cutoff"] and figures["min_answers"] == 300
    assert figures["candidate_auc"] == figures["production_auc"] > 0.6 and figures["diff_ci95"] == [0.0, 0.0]
    assert models_cli(["push-candidate", "--run-id", "run-7"]) == 0
    assert store.manifest("models", "cand-v7")["trained_until"] == holdout["candidate_trained_until"]
    capsys.readouterr()
    assert models_cli(["promote-if-better", "--run-id", "run-7"]) == 0
    assert "promote_if_better: figures: {" in capsys.readouterr().err  # the Airflow task log shows them
    assert models_cli(["promote-if-better", "--run-id", "run-7"]) == 0  # an Airflow retry: done, not refused
    [promoted] = promotions.history(store)
    assert (promoted["gate"], promoted["candidate"], promoted["production"]) == ("holdout", "cand-v7", "prod-v1")
    assert promoted["figures"]["n"] == holdout["n"] and promoted["figures"]["tolerance"] == 0.005

    # The next run on the same data: production (cand-v7) trained on everything before the cutoff, and only the
    # newest answers are left, fewer than the minimum: the user-split test set decides, and the note says so.
    monkeypatch.setenv("DKT_GATE_MIN_ANSWERS", str(holdout["n"] + 1))
    assert models_cli(["pull-data", "--run-id", "run-8"]) == 0
    again = json.loads((work_dir("retrain_and_push", "run-8") / "gate" / "holdout.json").read_text())
    assert not again["active"] and again["production_trained_until"] == holdout["candidate_trained_until"]
    assert f"fewer than DKT_GATE_MIN_ANSWERS={holdout['n'] + 1}: the user-split test set decides" in again["note"]


def test_an_unknown_candidate_kind_is_one_error_line_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    monkeypatch.setenv("DKT_TRAIN_CANDIDATES", "lstm,saint")
    assert retrain.candidate_configs("lstm, saint") == [ROOT / "config" / "lstm.json", ROOT / "config" / "saint.json"]
    assert models_cli(["train", "--run-id", "r1", "--candidates", "lstm,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: DKT_TRAIN_CANDIDATES 'lstm,nope': no config ") and "nope.json" in err, err
    assert "\n" not in err and "saint" in err  # the known names are listed
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("candidates"))
