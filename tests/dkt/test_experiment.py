"""train.py end to end: learning for real, determinism, the bundle contract, clear errors."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dkt.bundle import LINEAGE_KEYS, BundleError, config_hash, read_meta
from dkt.data.io import read_csv
from dkt.metrics import auc
from dkt.predictor import load_predictor
from tests.conftest import ROOT, TINY_LSTM

METRIC_KEYS = {"test_auc", "test_auc_last", "test_acc", "n_params", "train_seconds", "device"}


def test_bundle_has_the_documented_files_and_keys(lstm_bundle: Path) -> None:
    for name in ("bundle.json", "config.json", "encoder.json", "catalog.json", "metrics.json", "weights.pt"):
        assert (lstm_bundle / name).is_file(), name
    meta = read_meta(lstm_bundle)
    assert meta["model"] == "lstm" and meta["kind"] == "sequence" and meta["model_version"] == "test-v1"
    assert {"code_version", "data_version", "data_fingerprint", "created_at", "max_seq_len"} <= set(meta)
    assert set(LINEAGE_KEYS) <= set(meta) and meta["seed"] == 1
    assert meta["config_hash"] == config_hash(json.loads((lstm_bundle / "config.json").read_text()))
    # bundle.json is written last (after the smoke check): nothing in the folder is newer.
    newest = max(p.stat().st_mtime_ns for p in lstm_bundle.iterdir() if p.name != "bundle.json")
    assert (lstm_bundle / "bundle.json").stat().st_mtime_ns >= newest
    assert not list(lstm_bundle.glob("*.tmp"))
    metrics = json.loads((lstm_bundle / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert metrics["device"] == "cpu" and metrics["n_params"] > 0


def test_model_learns_beyond_population_and_item_baselines(lstm_bundle: Path, sim_dir: Path) -> None:
    train, test = read_csv(sim_dir / "train.csv"), read_csv(sim_dir / "test.csv")
    metrics = json.loads((lstm_bundle / "metrics.json").read_text())
    # The population mean is one constant for everyone: AUC 0.5. A model that learns clears it by far.
    assert metrics["test_auc"] > 0.65
    # It must also beat knowing each skill's difficulty alone (a per-skill mean from training data).
    skill_mean = train.groupby("KnowledgeTag")["answerCode"].mean()
    baseline = auc(test["answerCode"].to_numpy(), test["KnowledgeTag"].map(skill_mean).fillna(0.5).to_numpy())
    assert metrics["test_auc"] > baseline + 0.02, (metrics["test_auc"], baseline)


def test_reloaded_bundle_gives_the_same_predictions(lstm_bundle: Path, sim_dir: Path) -> None:
    test = read_csv(sim_dir / "test.csv")
    p1 = load_predictor(lstm_bundle).predict_rows(test)
    p2 = load_predictor(lstm_bundle).predict_rows(test)
    assert not np.isnan(p1).any()
    np.testing.assert_array_equal(p1, p2)
    metrics = json.loads((lstm_bundle / "metrics.json").read_text())
    y = test["answerCode"].to_numpy()
    assert auc(y, p1) == pytest.approx(metrics["test_auc"], abs=1e-9)
    # RMSE of the probabilities, the benchmarks' third column; a constant prediction of the mean does worse.
    assert np.sqrt(np.mean((p1 - y) ** 2)) == pytest.approx(metrics["test_rmse"], abs=1e-9)
    assert metrics["test_rmse"] < np.sqrt(np.mean((y.mean() - y) ** 2))


def test_changing_a_future_answer_never_changes_an_earlier_prediction(lstm_bundle: Path, sim_dir: Path) -> None:
    predictor = load_predictor(lstm_bundle)
    test = read_csv(sim_dir / "test.csv")
    user = test["userID"].value_counts().index[0]
    seq = test[test["userID"] == user].sort_values("Timestamp").reset_index(drop=True)
    k = len(seq) // 2
    flipped = seq.copy()
    flipped.loc[k, "answerCode"] = 1 - flipped.loc[k, "answerCode"]
    before, after = predictor.predict_rows(seq), predictor.predict_rows(flipped)
    np.testing.assert_allclose(before[: k + 1], after[: k + 1], rtol=0, atol=1e-6)
    # ...and it does change what comes next: the model really reads previous answers.
    assert np.abs(before[k + 1 :] - after[k + 1 :]).max() > 1e-4


def test_row_order_does_not_matter(lstm_bundle: Path, sim_dir: Path) -> None:
    predictor = load_predictor(lstm_bundle)
    test = read_csv(sim_dir / "test.csv")
    perm = np.random.default_rng(0).permutation(len(test))
    shuffled = test.iloc[perm].reset_index(drop=True)
    np.testing.assert_allclose(predictor.predict_rows(shuffled), predictor.predict_rows(test)[perm], atol=1e-6)


def test_candidates_and_knowledge_state(lstm_bundle: Path, sim_dir: Path) -> None:
    predictor = load_predictor(lstm_bundle)
    test = read_csv(sim_dir / "test.csv")
    history = test[test["userID"] == test["userID"].iloc[0]]
    cands = history[["assessmentItemID", "testId", "KnowledgeTag"]].drop_duplicates().head(5)
    p = predictor.predict_candidates(history, cands)
    assert p.shape == (len(cands),) and ((p > 0) & (p < 1)).all()
    # Asking one candidate alone gives the same answer as asking it among others.
    one = predictor.predict_candidates(history, cands.iloc[[2]])
    assert one[0] == pytest.approx(p[2], abs=1e-6)
    state = predictor.knowledge_state(history)
    assert set(state) == {int(t) for t in predictor.catalog}
    assert all(0 < v < 1 for v in state.values())
    # An unseen item still gets a prediction (the unknown class), and an empty history works.
    unseen = pd.DataFrame({"assessmentItemID": ["A999999999"], "testId": ["A999000999"], "KnowledgeTag": [1]})
    assert 0 < predictor.predict_candidates(history, unseen)[0] < 1
    assert 0 < predictor.predict_candidates(history.iloc[0:0], cands)[0] < 1


@pytest.mark.slow  # two real trainings
def test_training_is_deterministic_with_a_seed(sim_dir: Path, tmp_path: Path) -> None:
    from dkt.config import parse_config
    from dkt.experiment import load_run_data, run

    cfg = parse_config(TINY_LSTM | {"train": TINY_LSTM["train"] | {"epochs": 1}})
    data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=3)
    m1 = run(cfg, data, tmp_path / "a", device="cpu", seed=3, progress=False)
    m2 = run(cfg, data, tmp_path / "b", device="cpu", seed=3, progress=False)
    assert m1["test_auc"] == m2["test_auc"]
    w1 = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    w2 = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_amp_setting_leaves_cpu_training_in_full_precision(sim_dir: Path) -> None:
    """``train.amp`` (on by default) acts on CUDA only: on CPU a run with it is the run without it, to the bit."""
    from dkt.config import parse_config
    from dkt.data.features import FeatureEncoder
    from dkt.models.interface import kind_class
    from dkt.training import fit_sequence_model, seed_everything

    df = read_csv(sim_dir / "train.csv")
    users = sorted(df["userID"].unique())
    train, valid = (df[df["userID"].isin(part)] for part in (users[:12], users[12:18]))
    encoder = FeatureEncoder.fit(train)
    runs = []
    for amp in (True, False):
        cfg = parse_config(TINY_LSTM | {"train": TINY_LSTM["train"] | {"epochs": 1, "amp": amp}})
        seed_everything(5)
        model = kind_class("lstm").build(cfg.model_params, encoder.sizes())
        fit = fit_sequence_model(model, encoder.transform(train), encoder.transform(valid), cfg.train,
                                 torch.device("cpu"), seed=5, progress=False)  # fmt: skip
        runs.append((fit.history[0], model.state_dict()))
    (h1, w1), (h2, w2) = runs
    assert all(p.dtype == torch.float32 for p in w1.values())
    assert {k: v for k, v in h1.items() if k != "seconds"} == {k: v for k, v in h2.items() if k != "seconds"}
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_ema_epochs_keeps_the_moving_average_of_every_step_s_weights(sim_dir: Path) -> None:
    """``train.ema_epochs``: what is validated, kept and returned is e_1 = w_1, e_k = d * e_(k-1) + (1 - d) * w_k over
    the weights w_k after each optimiser step (each recorded by an optimiser hook), not the last step's weights, with
    d = 1 - 1 / (ema_epochs x steps per epoch): a span in epochs, the same on a small data set and a large one."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from dkt.config import parse_config
    from dkt.data.features import FeatureEncoder
    from dkt.models.interface import kind_class
    from dkt.training import fit_sequence_model, seed_everything

    df = read_csv(sim_dir / "train.csv")
    users = sorted(df["userID"].unique())
    train, valid = (df[df["userID"].isin(part)] for part in (users[:12], users[12:18]))
    encoder = FeatureEncoder.fit(train)
    ema_epochs = 1.0
    steps: list[dict[str, torch.Tensor]] = []
    kept = {}
    for ema in (None, ema_epochs):
        cfg = parse_config(TINY_LSTM | {"train": TINY_LSTM["train"] | {"epochs": 1, "ema_epochs": ema}})
        seed_everything(5)
        model = kind_class("lstm").build(cfg.model_params, encoder.sizes())
        names = {id(p): k for k, p in model.named_parameters()}
        taken: list[dict[str, torch.Tensor]] = steps if ema is None else []

        def record(
            opt: torch.optim.Optimizer,
            *_: object,
            taken: list[dict[str, torch.Tensor]] = taken,
            names: dict[int, str] = names,
        ) -> None:
            taken.append({names[id(p)]: p.detach().clone() for g in opt.param_groups for p in g["params"]})

        hook = register_optimizer_step_post_hook(record)
        try:
            fit_sequence_model(model, encoder.transform(train), encoder.transform(valid), cfg.train,
                               torch.device("cpu"), seed=5, progress=False)  # fmt: skip
        finally:
            hook.remove()
        kept[ema] = {k: v.clone() for k, v in model.named_parameters()}
    assert len(steps) >= 3  # one epoch of steps: enough for the average to differ from the last one
    decay = 1 - 1 / (ema_epochs * len(steps))
    expected = dict(steps[0])
    for w in steps[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in w}
    # The same seed trains the same steps either way: only what is kept differs.
    assert all(torch.equal(kept[None][k], steps[-1][k]) for k in expected)
    assert all(torch.allclose(kept[ema_epochs][k], expected[k], atol=1e-6) for k in expected)
    assert any(not torch.allclose(kept[ema_epochs][k], steps[-1][k], atol=1e-4) for k in expected)


def test_batch_tokens_trains_batches_of_like_length_within_the_budget(sim_dir: Path) -> None:
    """``train.batch_tokens``: every training step's batch fits the budget of positions (rows x width), short windows
    go many to a step, and the learning-rate schedule is set for the steps the epochs really take (a count off by one
    moves every step's rate). A budget below one window is refused, naming the field."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from dkt.config import ConfigError, parse_config
    from dkt.data.features import FeatureEncoder
    from dkt.models.interface import kind_class
    from dkt.training import fit_sequence_model, seed_everything, warmup_cosine

    df = read_csv(sim_dir / "train.csv")
    users = sorted(df["userID"].unique())
    train, valid = (df[df["userID"].isin(part)] for part in (users[:12], users[12:18]))
    encoder = FeatureEncoder.fit(train)
    budget = 800  # four windows of 200: the simulated students' histories are 20-650 answers long
    window = {"max_seq_len": 200, "window_stride": 200}
    cfg = parse_config(TINY_LSTM | {"train": TINY_LSTM["train"] | window | {"epochs": 2, "batch_tokens": budget}})
    seed_everything(5)
    model = kind_class("lstm").build(cfg.model_params, encoder.sizes())
    shapes: list[tuple[int, int]] = []
    lrs: list[float] = []
    hooks = [
        model.register_forward_pre_hook(
            lambda m, args: shapes.append(tuple(args[0]["mask"].shape)) if m.training else None
        ),
        register_optimizer_step_post_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"])),
    ]
    try:
        fit = fit_sequence_model(model, encoder.transform(train), encoder.transform(valid), cfg.train,
                                 torch.device("cpu"), seed=5, progress=False)  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    assert fit.epochs_run == 2 and len(shapes) == len(lrs) >= 4
    assert all(rows * width <= budget for rows, width in shapes), shapes
    assert max(rows for rows, _ in shapes) > budget // cfg.train.max_seq_len  # short windows, many to a batch
    total = len(lrs)
    factor = warmup_cosine(total, int(cfg.train.warmup_ratio * total))
    assert lrs == pytest.approx([cfg.train.lr * factor(k) for k in range(total)], rel=1e-9)
    with pytest.raises(ConfigError, match="batch_tokens"):
        parse_config(TINY_LSTM | {"train": TINY_LSTM["train"] | window | {"batch_tokens": 199}})


def run_cli(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """A command's ``main`` in the test's process, as a finished process would report it (exit code, stdout, stderr).

    In-process (each was a train.py / inference.py process paying about 2 CPU-s of pandas and torch imports): these
    tests are about what the commands say and write. Their process contract (exit 2, one error line, no traceback)
    is checked on real processes: train.py's twelve refusals in tests/dkt/test_train_cli.py, `dkt infer`'s in
    tests/test_cli.py; an exception here would fail the test, where a process would have printed a traceback."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def test_train_cli_reports_bad_config_and_bad_data_clearly(
    tmp_path: Path, sim_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dkt.commands.train import main as train

    monkeypatch.chdir(ROOT)  # where train.py runs: config/lstm.json below is relative to it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "lstm", "train": {"max_seq_len": 1, "lr": -1, "ema_epochs": 0}}))
    common = ["--train-file", str(sim_dir / "train.csv"), "--test-file", str(sim_dir / "test.csv")]
    res = run_cli(train, ["--config", str(bad), *common, "--output-dir", str(tmp_path / "o")], capsys)
    assert res.returncode == 2
    assert "train.max_seq_len" in res.stderr and "train.lr" in res.stderr and "Traceback" not in res.stderr
    assert "train.ema_epochs" in res.stderr  # an average over no steps: refused, not taken as "off"
    broken = tmp_path / "broken.csv"
    broken.write_text((sim_dir / "train.csv").read_text().replace(",1,2020", ",7,2020", 1))
    res = run_cli(
        train,
        [
            "--config",
            "config/lstm.json",
            "--train-file",
            str(broken),
            "--test-file",
            str(sim_dir / "test.csv"),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert res.returncode == 2 and "answerCode" in res.stderr and str(broken) in res.stderr


def to_predict(sim_dir: Path, tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """The test file with each student's last answer hidden (answerCode -1): what inference.py predicts."""
    test = read_csv(sim_dir / "test.csv")
    last = test.sort_values("Timestamp").groupby("userID").tail(1).index
    test.loc[last, "answerCode"] = -1
    data = tmp_path / "to_predict.csv"
    test.to_csv(data, index=False)
    return test, data


def test_inference_cli_writes_id_prediction(
    lstm_bundle: Path, sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dkt.commands.infer import main as infer

    test, data = to_predict(sim_dir, tmp_path)
    last = test.index[test["answerCode"] == -1]
    out = tmp_path / "pred.csv"
    res = run_cli(infer, ["--model-dir", str(lstm_bundle), "--data-file", str(data), "--output", str(out)], capsys)
    assert res.returncode == 0, res.stderr
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["id", "prediction"]
    assert pred["id"].tolist() == list(range(len(last)))
    expected = load_predictor(lstm_bundle).predict_last(test)
    targets = test.loc[test["answerCode"] == -1, "userID"]
    np.testing.assert_allclose(pred["prediction"], expected.loc[targets].to_numpy(), atol=1e-6)


def test_inference_on_cuda_without_one_is_one_error_line(
    lstm_bundle: Path, sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--device cuda` (and DKT_SERVICE_DEVICE=cuda for the service, the same resolve_device) on a host whose torch
    sees no GPU: exit 2 naming the device, no output file; with a GPU the same call writes the predictions."""
    from dkt.commands.infer import main as infer

    out = tmp_path / "pred.csv"
    _, data = to_predict(sim_dir, tmp_path)
    code = infer(["--model-dir", str(lstm_bundle), "--data-file", str(data), "--output", str(out),
                  "--device", "cuda"])  # fmt: skip
    if torch.cuda.is_available():
        assert code == 0 and out.is_file()
    else:
        assert code == 2 and not out.exists()
        assert capsys.readouterr().err == "error: device 'cuda' was asked for but torch sees no CUDA device\n"


def test_incomplete_bundle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(BundleError, match=r"bundle\.json missing"):
        load_predictor(tmp_path)
