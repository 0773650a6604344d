"""Warm-started retraining: a candidate starts from the production bundle's weights when kind and parameters match,
new items and skills extending its embeddings; otherwise it trains from scratch and says why."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dkt.config import parse_config
from dkt.data.features import FeatureEncoder
from dkt.experiment import load_run_data, run
from dkt.models.interface import TrainJob, kind_class
from dkt.training import seed_everything
from tests.conftest import TINY_LSTM


def extended(sim_dir: Path, out: Path) -> Path:
    """The simulated train file plus a few answers to items and a skill production never saw; the new item ids sort
    first, so every known item's row moves (rows must be matched by value, not by position)."""
    df = pd.read_csv(sim_dir / "train.csv", dtype={"userID": str})
    extra = df.groupby("userID").tail(1).head(40).copy()
    extra["assessmentItemID"] = [f"A000000{i % 4}" for i in range(len(extra))]
    extra["KnowledgeTag"] = 999_999
    extra["Timestamp"] = pd.to_datetime(extra["Timestamp"]) + pd.Timedelta(minutes=5)
    out.mkdir()
    pd.concat([df, extra], ignore_index=True).to_csv(out / "train.csv", index=False)
    return out / "train.csv"


def job(config: dict, encoder: FeatureEncoder, init_from: Path, tmp: Path) -> TrainJob:
    return TrainJob(parse_config(config), encoder, None, tmp, 1, "cpu", 1, tmp, False, lambda *_: {}, init_from)  # type: ignore[arg-type]


def test_warm_start_extends_the_vocabulary_keeps_the_old_rows_and_trains(
    lstm_bundle: Path, sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_file = extended(sim_dir, tmp_path / "data")
    data = load_run_data(train_file, sim_dir / "test.csv", None, "csv", 0.15, seed=1)
    new = FeatureEncoder.fit(data.train)
    old = FeatureEncoder.from_dict(json.loads((lstm_bundle / "encoder.json").read_text()))
    assert set(old.vocab["item"]) < set(new.vocab["item"]) and set(old.vocab["tag"]) < set(new.vocab["tag"])
    old_state = torch.load(lstm_bundle / "weights.pt", weights_only=True)
    lstm = kind_class("lstm")

    seed_everything(3)
    fresh = lstm.build(TINY_LSTM["model_params"], new.sizes()).state_dict()
    seed_everything(3)
    model = lstm.build(TINY_LSTM["model_params"], new.sizes())
    assert lstm.warm_start(model, job(TINY_LSTM, new, lstm_bundle, tmp_path))
    state = model.state_dict()
    item, tag = state["inp.cat.item.weight"], state["inp.cat.tag.weight"]
    for value, i in old.vocab["item"].items():  # every known item: its production row, at its new position
        assert torch.equal(item[new.vocab["item"][value]], old_state["inp.cat.item.weight"][i])
        for a in (0, 1):  # and its (item, answer) interaction rows
            assert torch.equal(state["inp.resp.prev_item_resp.weight"][2 + 2 * new.vocab["item"][value] + a],
                               old_state["inp.resp.prev_item_resp.weight"][2 + 2 * i + a])  # fmt: skip
    for value in set(new.vocab["item"]) - set(old.vocab["item"]):  # new items: freshly initialised
        assert torch.equal(item[new.vocab["item"][value]], fresh["inp.cat.item.weight"][new.vocab["item"][value]])
    assert torch.equal(tag[new.vocab["tag"]["999999"]], fresh["inp.cat.tag.weight"][new.vocab["tag"]["999999"]])
    for key, tensor in old_state.items():
        if ".cat." not in key and ".resp." not in key:  # the recurrent and output layers: production's
            assert torch.equal(state[key], tensor), key

    # Through `dkt train --init-from`'s path: it loads, trains an epoch and writes a bundle that loads and scores.
    capsys.readouterr()
    metrics = run(parse_config({**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 1}}), data, tmp_path / "b",
                  device="cpu", seed=1, progress=False, init_from=lstm_bundle)  # fmt: skip
    assert f"warm start: from {lstm_bundle} (test-v1): " in capsys.readouterr().err
    assert metrics["epochs_run"] == 1 and metrics["test_auc"] > 0.6


def test_warm_start_falls_back_to_scratch_and_says_why(
    lstm_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enc = FeatureEncoder.from_dict(json.loads((lstm_bundle / "encoder.json").read_text()))
    wider = {**TINY_LSTM, "model_params": {**TINY_LSTM["model_params"], "hidden_dim": 48}}
    model = kind_class("lstm").build(wider["model_params"], enc.sizes())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not kind_class("lstm").warm_start(model, job(wider, enc, lstm_bundle, tmp_path))
    assert "its model_params differ from this config's): training from scratch" in capsys.readouterr().err
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    saint = {"model": "saint", "model_params": {"d_model": 32, "emb_dim": 16, "n_heads": 2}, "train": {}}
    model = kind_class("saint").build(saint["model_params"], enc.sizes())
    assert not kind_class("saint").warm_start(model, job(saint, enc, lstm_bundle, tmp_path))
    assert "(it is a lstm model, this is saint): training from scratch" in capsys.readouterr().err


def test_a_warm_startable_candidate_gets_a_short_fine_tune_another_its_own_config(
    lstm_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.retrain import fine_tune_config

    monkeypatch.setenv("DKT_WARM_EPOCHS", "2")
    monkeypatch.setenv("DKT_WARM_PATIENCE", "1")
    same = tmp_path / "same.json"
    same.write_text(json.dumps({**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 30, "patience": 3}}))
    tuned = fine_tune_config(same, lstm_bundle, tmp_path / "out" / "1-same.fine-tune.json")
    assert tuned is not None
    doc = json.loads(tuned.read_text())
    assert doc["train"]["epochs"] == 2 and doc["train"]["patience"] == 1
    assert doc["model_params"] == TINY_LSTM["model_params"] and doc["model"] == "lstm"
    # Production cannot seed these: they train as configured (from scratch), no fine-tune config is written.
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**TINY_LSTM, "model_params": {**TINY_LSTM["model_params"], "hidden_dim": 48}}))
    assert fine_tune_config(wider, lstm_bundle, tmp_path / "w.json") is None
    assert fine_tune_config(Path("config/saint.json"), lstm_bundle, tmp_path / "saint-out.json") is None
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "saint-out.json").exists()
