"""The model interface (``dkt.models.interface``) for every registered kind.

The registry finds each kind by the name of its file; and the incremental form (initial state, one step
per answer, scores from a state) gives what the batch form gives for the same history, for every kind,
across the places where the window rule moves on. Models are trained through the interface itself
(``ModelKind.train``), small and briefly: the contract holds for any weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dkt.bundle import BUNDLE_FORMAT, write_json
from dkt.config import parse_config
from dkt.data.features import FeatureEncoder
from dkt.data.schema import COLUMNS, validate
from dkt.models import interface
from dkt.models.interface import SUPPORT_MODULES, ModelKind, RunData, TrainJob, kind_class, model_names
from dkt.predictor import load_predictor
from dkt.simulate import simulate
from dkt.training import seed_everything
from tests.conftest import made_once

MAX_LEN = 8  # windows move on every 4 answers: a 30-answer history crosses the rule several times
SMALL: dict[str, dict[str, Any]] = {
    # as shipped (the order inputs too: a step must carry the order of the answers as the batch encoding does)
    "lstm": {
        "d_model": 16,
        "hidden_dim": 16,
        "embedding": "sum",
        "lstm_input": "sum",
        "head_dim": 16,
        "order_inputs": True,
    },
    "lstmattn": {"d_model": 16, "emb_dim": 8, "hidden_dim": 16, "n_heads": 2},
    # bert as shipped (ALiBi, summed input, no dropout, the order inputs, the local convolution); saint keeps the
    # learned position table, so both of the attention models' position forms go through the interface's state and
    # batch checks.
    "bert": {
        "d_model": 16,
        "hidden_dim": 16,
        "n_heads": 2,
        "n_layers": 1,
        "dropout": 0.0,
        "emb_dropout": 0.0,
        "positions": "alibi",
        "embedding": "sum",
        "order_inputs": True,
        "local_conv": 4,
    },
    "saint": {"d_model": 16, "emb_dim": 8, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 1, "max_positions": 16},
    "dkvmn": {"d_model": 16, "emb_dim": 8, "memory_size": 4, "key_dim": 8, "value_dim": 8},
    "akt": {"d_model": 16, "emb_dim": 8, "n_heads": 2},
    "simplekt": {"d_model": 16, "emb_dim": 8, "n_heads": 2, "n_blocks": 1},
    "lgbm": {"num_leaves": 4, "n_estimators": 8, "n_jobs": 1, "log_every": 0, "n_folds": 2},
}
TRAIN = {"max_seq_len": MAX_LEN, "batch_size": 16, "epochs": 1, "max_train_windows": 32, "eval_batch_size": 64}
ENSEMBLE_WEIGHTS = {"lstm": 0.25, "lgbm": 0.75}
# Around the places the window rule moves on (window_start: 0 up to 7 answers, 4 from 8, 8 from 12, ...).
PREFIXES = (0, 1, 7, 8, 9, 12, 21)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread: None) -> None:
    """Small models: a second intra-op thread only adds sync cost on a busy CPU."""


@pytest.fixture(scope="module")
def data() -> RunData:
    sim = simulate(24, seed=3).interactions.loc[:, list(COLUMNS)]
    users = np.sort(sim["userID"].unique())
    parts = [validate(sim[sim["userID"].isin(u)].reset_index(drop=True)) for u in np.split(users, [16, 20])]
    return RunData(*parts, fingerprints={})


def make_bundle(name: str, data: RunData, out: Path) -> Path:
    """Train ``name`` through its kind and write the files ``load`` reads, as ``dkt.experiment.run`` does."""
    out.mkdir(parents=True)
    kind = kind_class(name)
    config = parse_config({"model": name, "model_params": SMALL.get(name, {}), "train": TRAIN})
    encoder = FeatureEncoder.fit(data.train)
    write_json(out / "config.json", config.model_dump(mode="json"))
    write_json(out / "encoder.json", encoder.to_dict())
    write_json(out / "catalog.json", {})
    seed_everything(0)
    job = TrainJob(config, encoder, data, out, 1, "cpu", 0, out, False, train_member=_no_members)
    fit = kind.train(job)
    meta = {"format": BUNDLE_FORMAT, "model": name, "kind": kind.bundle_kind, "max_seq_len": MAX_LEN}
    write_json(out / "bundle.json", meta | {"model_version": "t", "n_params": fit["n_params"]})
    return out


def _no_members(config: Path, out: Path, seed: int) -> dict[str, Any]:
    raise AssertionError("only an ensemble trains members")


@pytest.fixture(scope="module")
def bundles(data: RunData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained once per run, whichever xdist worker gets here first."""
    root = made_once(tmp_path_factory, "interface-kinds", lambda out: make_bundles(data, out))
    return {name: root / name for name in model_names()}


def make_bundles(data: RunData, root: Path) -> None:
    made = {name: make_bundle(name, data, root / name) for name in model_names() if name != "ensemble"}
    # The ensemble over two of them: its files point at member bundles, as train_ensemble writes them.
    ens = root / "ensemble"
    (ens / "members").mkdir(parents=True)
    members = []
    for i, (name, weight) in enumerate(ENSEMBLE_WEIGHTS.items()):
        (ens / "members" / f"0{i}-{name}").symlink_to(made[name], target_is_directory=True)
        members.append({"dir": f"members/0{i}-{name}", "weight": weight})
    write_json(ens / "ensemble.json", {"members": members})
    write_json(ens / "config.json", {"model": "ensemble"})
    meta = {"format": BUNDLE_FORMAT, "model": "ensemble", "kind": "ensemble", "max_seq_len": MAX_LEN}
    write_json(ens / "bundle.json", meta | {"model_version": "t"})


@pytest.fixture(scope="module")
def student(data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The longest test history, and candidates: known items and one the encoder has never seen."""
    sizes = data.test.groupby("userID").size()
    hist = data.test[data.test["userID"] == sizes.idxmax()].sort_values("Timestamp", kind="stable")
    assert len(hist) > max(PREFIXES)
    known = data.train[["assessmentItemID", "testId", "KnowledgeTag"]].drop_duplicates().head(5)
    unseen = pd.DataFrame({"assessmentItemID": ["Z1"], "testId": ["Z0"], "KnowledgeTag": [424242]})
    return hist.reset_index(drop=True), pd.concat([known, unseen], ignore_index=True)


# ---------------------------------------------------------------- the registry


def test_every_kind_lives_in_its_own_file_and_registers_itself() -> None:
    names = model_names()
    assert names == ["akt", "bert", "dkvmn", "ensemble", "lgbm", "lstm", "lstmattn", "saint", "simplekt"]
    for name in names:
        kind = kind_class(name)
        assert issubclass(kind, ModelKind) and kind.name == name
        assert kind.__module__ == f"dkt.models.{name}"
    here = Path(interface.__file__).parent
    assert sorted(p.stem for p in here.glob("*.py") if p.stem != "__init__") == sorted({*names, *SUPPORT_MODULES})


def test_unknown_or_misplaced_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model 'lsmt'; known: \['akt', 'bert'"):
        kind_class("lsmt")

    class Misplaced(ModelKind):
        name = "lstm"
        bundle_kind = "sequence"

    with pytest.raises(TypeError, match=r"must live in dkt/models/lstm\.py"):
        interface.register(Misplaced)
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"format": BUNDLE_FORMAT, "model": "lstm", "kind": "lgbm"}))
    with pytest.raises(ValueError, match="bundle kind 'lgbm' does not match model 'lstm'"):
        load_predictor(bundle)


# ---------------------------------------------------------------- the incremental form


@pytest.mark.parametrize("name", ["akt", "bert", "dkvmn", "ensemble", "lgbm", "lstm", "lstmattn", "saint", "simplekt"])
def test_stepping_answers_gives_the_batch_scores(
    name: str, bundles: dict[str, Path], student: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    p = load_predictor(bundles[name])
    hist, cands = student
    state, stepped, worst = p.initial_state(), 0, 0.0
    seconds = {"step": 0.0, "score": 0.0, "batch": 0.0}
    for n in PREFIXES:
        tick = time.perf_counter()
        for row in hist.iloc[stepped:n].to_dict("records"):
            state = p.step(state, row)
        seconds["step"] += time.perf_counter() - tick
        stepped = n
        prefix = hist.iloc[:n]
        at = hist["Timestamp"].iloc[n] if n < len(hist) else hist["Timestamp"].iloc[-1]
        tick = time.perf_counter()
        got = p.score(state, cands, at)
        seconds["score"] += time.perf_counter() - tick
        # The batch form serving uses (tests/dkt/test_predictor_candidates.py ties it to the reference path).
        tick = time.perf_counter()
        batch = p.predict_candidates_batch([(prefix, cands, at)])[0]
        seconds["batch"] += time.perf_counter() - tick
        assert got.shape == (len(cands),) and np.isfinite(got).all()
        np.testing.assert_allclose(got, batch, rtol=0, atol=1e-6, err_msg=f"{name}, {n} answers")
        worst = max(worst, float(np.abs(got - batch).max()))
    print(
        f"{name}: max |incremental - batch| over {len(PREFIXES)} prefixes: {worst:.2e}; "
        f"ms per step {1000 * seconds['step'] / stepped:.2f}, per score {1000 * seconds['score'] / len(PREFIXES):.2f}, "
        f"per batch call {1000 * seconds['batch'] / len(PREFIXES):.2f} ({len(cands)} candidates)"
    )
    # ...and the reference itself once: one pseudo-user per candidate through predict_rows.
    np.testing.assert_allclose(got, p.reference_candidates(prefix, cands, at), rtol=0, atol=1e-6)
    # state_of: the same steps, from a history table in one call. Equal to float32 rounding, not to the bit: lstm's
    # state_of embeds the window's rows in one matrix product where a step embeds one row, and the kernels sum the
    # 13 continuous inputs (with the order inputs) in a different order (a difference of about 1e-8 seen).
    np.testing.assert_allclose(p.score(p.state_of(hist.iloc[:stepped]), cands, at), got, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "lstmattn", "lgbm", "ensemble"])
def test_states_are_values_and_time_runs_forward(
    name: str, bundles: dict[str, Path], student: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    p = load_predictor(bundles[name])
    hist, cands = student
    rows = hist.to_dict("records")
    state = p.state_of(hist.iloc[:10])
    at = hist["Timestamp"].iloc[10]
    before = p.score(state, cands, at)
    later = p.step(state, rows[10])
    np.testing.assert_array_equal(p.score(state, cands, at), before)  # stepping did not change the old state
    assert not np.array_equal(p.score(later, cands, hist["Timestamp"].iloc[11]), before)
    with pytest.raises(ValueError, match="before the student's last answer"):
        p.step(later, rows[3])
    with pytest.raises(ValueError, match=r"at .* is before the student's last answer"):
        p.score(later, cands, hist["Timestamp"].iloc[0])
    assert p.score(later, cands.iloc[0:0], at).shape == (0,)
