"""Soft-voting ensemble: members are real bundles and the ensemble is exactly their weighted mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dkt.config import ConfigError, load_config
from dkt.data.schema import COLUMNS, validate
from dkt.experiment import RunData, run
from dkt.metrics import auc
from dkt.models.ensemble import (
    EnsemblePredictor,
    choose_combine,
    fit_weights,
    normalise,
    parse_params,
    weighted_mean,
)
from dkt.predictor import load_predictor
from dkt.simulate import simulate
from dkt.training import log_loss
from tests.conftest import made_once

REPO = Path(__file__).resolve().parents[3]
TINY_LSTM = {
    "model": "lstm",
    "model_params": {"d_model": 16, "emb_dim": 8, "hidden_dim": 16},
    "train": {"max_seq_len": 50, "batch_size": 32, "epochs": 1, "max_train_windows": 200},
}
TINY_LGBM = {"model": "lgbm", "model_params": {"num_leaves": 7, "n_estimators": 40, "log_every": 0, "n_jobs": 1}}
WEIGHTS = (3.0, 1.0)


@pytest.fixture(scope="module")
def data() -> RunData:
    sim = simulate(60, seed=5).interactions.loc[:, list(COLUMNS)]
    users = np.random.default_rng(0).permutation(np.sort(sim["userID"].unique()))
    parts = [validate(sim[sim["userID"].isin(u)].reset_index(drop=True)) for u in np.split(users, [36, 48])]
    return RunData(*parts, fingerprints={"train_file": "t", "test": "s"})


def write_configs(folder: Path, model_params: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_lstm.json").write_text(json.dumps(TINY_LSTM))
    (folder / "tiny_lgbm.json").write_text(json.dumps(TINY_LGBM))
    ens = {
        "model": "ensemble",
        "model_params": model_params or {},
        "members": [
            {"config": "tiny_lstm.json", "weight": WEIGHTS[0]},
            {"config": "tiny_lgbm.json", "weight": WEIGHTS[1]},
        ],
        "train": {"max_seq_len": 50},
    }
    (folder / "ens.json").write_text(json.dumps(ens))
    return folder / "ens.json"


@pytest.fixture(scope="module")
def bundle(data: RunData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Trained once per run, whichever xdist worker gets here first; run() returned what metrics.json holds."""

    def train(root: Path) -> None:
        run(write_configs(root / "config"), data, root / "bundle", device="cpu", seed=1, progress=False)

    out = made_once(tmp_path_factory, "ensemble-module", train) / "bundle"
    return out, json.loads((out / "metrics.json").read_text())


def test_ensemble_is_the_weighted_mean_of_its_members(bundle: tuple[Path, dict[str, Any]], data: RunData) -> None:
    out, _ = bundle
    ens = load_predictor(out)
    assert isinstance(ens, EnsemblePredictor)
    lstm, lgbm = (load_predictor(out / "members" / name) for name in ("00-lstm", "01-lgbm"))
    p_lstm, p_lgbm = lstm.predict_rows(data.test), lgbm.predict_rows(data.test)
    assert not np.allclose(p_lstm, p_lgbm)  # different members, so the weights matter
    expected = (WEIGHTS[0] * p_lstm + WEIGHTS[1] * p_lgbm) / sum(WEIGHTS)
    np.testing.assert_allclose(ens.predict_rows(data.test), expected, rtol=0, atol=1e-12)
    last = ens.predict_last(data.test)
    expected_last = (WEIGHTS[0] * lstm.predict_last(data.test) + WEIGHTS[1] * lgbm.predict_last(data.test)) / 4
    pd.testing.assert_series_equal(last, expected_last.rename("prediction"), rtol=0, atol=1e-12)


def test_ensemble_bundle_sums_its_members(bundle: tuple[Path, dict[str, Any]], data: RunData) -> None:
    out, metrics = bundle
    meta = json.loads((out / "bundle.json").read_text())
    members = [json.loads((out / "members" / n / "bundle.json").read_text()) for n in ("00-lstm", "01-lgbm")]
    assert meta["kind"] == "ensemble" and [m["kind"] for m in members] == ["sequence", "lgbm"]
    assert meta["n_params"] == sum(m["n_params"] for m in members)
    assert metrics["train_seconds"] == pytest.approx(sum(m["metrics"]["train_seconds"] for m in members), abs=0.02)
    spec = json.loads((out / "ensemble.json").read_text())
    assert [m["weight"] for m in spec["members"]] == pytest.approx([0.75, 0.25])
    # valid_auc is the ensemble's own, measured on the validation users.
    valid = load_predictor(out).predict_rows(data.valid)
    assert metrics["valid_auc"] == pytest.approx(auc(data.valid["answerCode"].to_numpy(), valid))
    assert metrics["test_auc"] > 0.6


def test_fit_weights_prefers_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    p_true = rng.uniform(0.05, 0.95, 4000)
    y = (rng.random(4000) < p_true).astype(float)
    noise = rng.uniform(0.05, 0.95, 4000)
    w = fit_weights([noise, p_true], y)
    assert w.sum() == pytest.approx(1.0)
    assert w[1] > 0.85
    np.testing.assert_allclose(weighted_mean([noise, p_true], np.array([0.0, 1.0])), p_true)


def test_fitted_weights_are_written_and_used(data: RunData, tmp_path: Path) -> None:
    cfg = write_configs(tmp_path / "config", {"fit_weights": True})
    stumps = TINY_LGBM | {"model_params": {"num_leaves": 2, "n_estimators": 5, "log_every": 0, "n_jobs": 1}}
    (cfg.parent / "stumps.json").write_text(json.dumps(stumps))
    spec_members = [{"config": "stumps.json", "weight": 1.0}, {"config": "tiny_lgbm.json", "weight": 1.0}]
    raw = json.loads(cfg.read_text()) | {"members": spec_members}  # two cheap members keep this test fast
    cfg.write_text(json.dumps(raw))
    out = tmp_path / "bundle"
    run(cfg, data, out, device="cpu", seed=2, progress=False)
    weights = [m["weight"] for m in json.loads((out / "ensemble.json").read_text())["members"]]
    assert sum(weights) == pytest.approx(1.0) and all(w >= 0 for w in weights)
    assert weights != pytest.approx([0.5, 0.5])  # fitted, not the config's equal weights
    members = [load_predictor(out / "members" / n).predict_rows(data.test) for n in ("00-lgbm", "01-lgbm")]
    assert not np.allclose(members[0], members[1])
    np.testing.assert_allclose(load_predictor(out).predict_rows(data.test), weighted_mean(members, np.array(weights)))


def test_logit_mean_is_the_sigmoid_of_the_weighted_log_odds() -> None:
    p = [np.array([0.9, 0.2, 0.5]), np.array([0.6, 0.1, 0.5])]
    w = np.array([0.25, 0.75])
    z = 0.25 * np.log(p[0] / (1 - p[0])) + 0.75 * np.log(p[1] / (1 - p[1]))
    np.testing.assert_allclose(weighted_mean(p, w, "logit"), 1 / (1 + np.exp(-z)), rtol=0, atol=1e-12)
    # Two members that agree on a confident answer stay as confident under either mean; where they disagree the
    # log-odds mean leans to the more confident one.
    assert weighted_mean([np.array([0.9]), np.array([0.9])], np.array([0.5, 0.5]), "logit")[0] == pytest.approx(0.9)
    assert weighted_mean([np.array([0.99]), np.array([0.3])], np.array([0.5, 0.5]), "logit")[0] > 0.645


def test_auto_combine_takes_the_mode_of_lower_validation_log_loss() -> None:
    """Members whose log-odds add up (each sees half the evidence): the logit mean is the better one and "auto"
    picks it; members that are the truth plus noise in probability: the probability mean."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1.5, 20_000), rng.normal(0, 1.5, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(a + b)))).astype(float)
    halves = [1 / (1 + np.exp(-2 * a)), 1 / (1 + np.exp(-2 * b))]
    equal = normalise([1.0, 1.0])
    combine, _, losses = choose_combine(halves, y, parse_params({"combine": "auto"}), equal)
    assert combine == "logit" and losses["logit"] < losses["prob"]
    assert losses == {m: pytest.approx(log_loss(y, weighted_mean(halves, equal, m))) for m in ("prob", "logit")}
    p_true = rng.uniform(0.02, 0.98, 20_000)
    y2 = (rng.random(20_000) < p_true).astype(float)
    noisy = [np.clip(p_true + rng.normal(0, 0.15, 20_000), 0.01, 0.99) for _ in range(2)]
    combine2, _, losses2 = choose_combine(noisy, y2, parse_params({"combine": "auto"}), equal)
    assert combine2 == "prob" and losses2["prob"] < losses2["logit"]
    # No labels to choose on: the config's weights, and "prob" for "auto".
    fitting = parse_params({"combine": "auto", "fit_weights": True})
    combine3, weights3, losses3 = choose_combine(halves, None, fitting, equal)
    assert (combine3, weights3.tolist(), losses3) == ("prob", [0.5, 0.5], {})


def test_fit_weights_finds_the_best_of_a_dozen_members() -> None:
    """Twelve members, one the truth and eleven noise: the fit puts (nearly) all the weight on the truth."""
    rng = np.random.default_rng(1)
    p_true = rng.uniform(0.05, 0.95, 6000)
    y = (rng.random(6000) < p_true).astype(float)
    members = [rng.uniform(0.05, 0.95, 6000) for _ in range(11)]
    members.insert(7, p_true)
    for mode in ("prob", "logit"):
        w = fit_weights(members, y, mode)
        assert int(np.argmax(w)) == 7 and w[7] > 0.85, (mode, w.round(3))


def test_members_of_one_group_share_one_fitted_weight() -> None:
    """Seeds of one config (one group) get equal weights; the fit is over groups. Two noisy copies of the truth
    (group "model") against two noise members (group "noise"): the model's group takes most, half each."""
    rng = np.random.default_rng(2)
    p_true = rng.uniform(0.05, 0.95, 8000)
    y = (rng.random(8000) < p_true).astype(float)
    seeds = [np.clip(p_true + rng.normal(0, s, 8000), 0.01, 0.99) for s in (0.05, 0.2)]  # one luckier than the other
    noise = [rng.uniform(0.05, 0.95, 8000) for _ in range(2)]
    for mode in ("prob", "logit"):
        w = fit_weights([seeds[0], noise[0], seeds[1], noise[1]], y, mode, ["model", "noise", "model", "noise"])
        assert w.sum() == pytest.approx(1.0)
        assert w[0] == pytest.approx(w[2]) and w[1] == pytest.approx(w[3]), w
        assert w[0] + w[2] > 0.75, (mode, w.round(3))
        alone = fit_weights([seeds[0], noise[0], seeds[1], noise[1]], y, mode)  # each its own weight
        assert alone[0] > 2 * alone[2]  # fitted one by one, the luckier seed takes the larger share
    assert fit_weights(seeds, y, "prob", ["one", "one"]).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="3 group labels for 2 members"):
        fit_weights(seeds, y, "prob", ["a", "b", "c"])


def test_member_seeds_train_distinct_members_and_a_repeat_is_refused(data: RunData, tmp_path: Path) -> None:
    """Two members of one config with their own seeds are two models (the bundles record the seeds); the same
    config and seed twice is refused before anything trains."""
    cfg = write_configs(tmp_path / "config", {"combine": "logit"})
    raw = json.loads(cfg.read_text())
    raw["members"] = [{"config": "tiny_lgbm.json", "seed": 3}, {"config": "tiny_lgbm.json", "seed": 4}]
    cfg.write_text(json.dumps(raw))
    out = tmp_path / "bundle"
    run(cfg, data, out, device="cpu", seed=2, progress=False)
    seeds = [json.loads((out / "members" / n / "bundle.json").read_text())["seed"] for n in ("00-lgbm", "01-lgbm")]
    assert seeds == [3, 4]
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["combine"] == "logit"
    members = [load_predictor(out / "members" / n).predict_rows(data.test) for n in ("00-lgbm", "01-lgbm")]
    assert not np.allclose(members[0], members[1])  # the seeds made two models (bagging draws differ)
    weights = np.array([m["weight"] for m in spec["members"]])
    expected = weighted_mean(members, weights, "logit")
    np.testing.assert_allclose(load_predictor(out).predict_rows(data.test), expected, rtol=0, atol=1e-12)

    raw["members"] = [{"config": "tiny_lgbm.json"}, {"config": "tiny_lgbm.json", "seed": 2}]
    cfg.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"members\[1\] repeats members\[0\] \(tiny_lgbm\.json, seed 2\)"):
        run(cfg, data, tmp_path / "twice", device="cpu", seed=2, progress=False)
    assert not (tmp_path / "twice" / "members").exists()


def test_a_rerun_keeps_the_members_it_already_trained(
    data: RunData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Members trained by an earlier run into the same folder from the same config, seed, epochs and data are kept
    (a run that stopped part way, or a member added to the config); any difference trains the member again."""
    cfg = write_configs(tmp_path / "config")
    raw = json.loads(cfg.read_text())
    raw["members"] = [{"config": "tiny_lgbm.json", "seed": 3}, {"config": "tiny_lgbm.json", "seed": 4}]
    cfg.write_text(json.dumps(raw))
    out = tmp_path / "bundle"
    run(cfg, data, out, device="cpu", seed=2, progress=False)
    first = json.loads((out / "history.json").read_text())
    stamps = {n: (out / "members" / n / "bundle.json").stat().st_mtime_ns for n in ("00-lgbm", "01-lgbm")}
    capsys.readouterr()

    raw["members"].append({"config": "tiny_lstm.json", "seed": 3})  # one member added at the end
    cfg.write_text(json.dumps(raw))
    run(cfg, data, out, device="cpu", seed=2, progress=False)
    err = capsys.readouterr().err
    assert err.count(": kept, trained before") == 2 and "member 3/3: lstm" in err
    assert {n: (out / "members" / n / "bundle.json").stat().st_mtime_ns for n in stamps} == stamps
    members = [load_predictor(out / "members" / n).predict_rows(data.test) for n in ("00-lgbm", "01-lgbm", "02-lstm")]
    weights = np.array([m["weight"] for m in json.loads((out / "ensemble.json").read_text())["members"]])
    np.testing.assert_allclose(load_predictor(out).predict_rows(data.test), weighted_mean(members, weights))
    kept = json.loads((out / "history.json").read_text())
    assert [h["test_auc"] for h in kept[:2]] == [h["test_auc"] for h in first] and kept[2]["member"] == "02-lstm"

    # Another epoch cap, or other validation users (another run seed), is another model: trained again.
    run(cfg, data, out, epochs=1, device="cpu", seed=2, progress=False)
    assert ": kept" not in capsys.readouterr().err
    (out / "members" / "00-lgbm" / "bundle.json").unlink()  # a member cut short: never kept
    run(cfg, data, out, epochs=1, device="cpu", seed=2, progress=False)
    assert capsys.readouterr().err.count(": kept, trained before") == 2


def test_bad_configs_fail_clearly(data: RunData, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_params\.fit_wieghts"):
        parse_params({"fit_wieghts": True})
    with pytest.raises(ConfigError, match=r"model_params\.combine"):
        parse_params({"combine": "median"})
    # ...and when the config is read, before any data loads or any file is written, naming the file
    bad = {"model": "ensemble", "model_params": {"combine": "median"}, "members": [{"config": "lstm.json"}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"bad\.json: invalid config\n.*ensemble: invalid model_params\n.*combine"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        normalise([0.0, 0.0])
    cfg = write_configs(tmp_path / "config")
    raw = json.loads(cfg.read_text())
    raw["members"][1]["config"] = "missing.json"
    cfg.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"missing\.json: config file not found"):
        run(cfg, data, tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out" / "members").exists()  # configs are checked before any member trains


@pytest.mark.parametrize("name", ["ensemble.json", "ensemble_best.json"])
def test_repo_ensemble_configs_are_valid(name: str) -> None:
    cfg = load_config(REPO / "config" / name)
    assert cfg.model == "ensemble" and len(cfg.members) >= 2
    parse_params(cfg.model_params)
    for m in cfg.members:
        assert load_config(REPO / "config" / m.config).model != "ensemble"
    pairs = [(m.config, m.seed) for m in cfg.members]
    assert len(set(pairs)) == len(pairs)  # no member trained twice
