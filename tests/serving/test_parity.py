"""Train/serve parity: what inference.py writes for an answerCode -1 row is what /predict returns for it.

For every model kind in config/ (the shipped configs made small, 1 epoch on small simulated data): the
probability ``inference.py`` writes for each -1 row equals what a running ``bentoml serve`` returns for the same
history (the user's rows before it), candidate and ``at`` (that row's Timestamp), within 1e-5, including
histories three times ``max_seq_len`` long and -1 rows in the middle of a history, at and around each window
boundary.

Parity needs the code paths, not a good model: each shipped config keeps its layers, heads, members and
options, with narrower layers and a shorter ``max_seq_len`` (so a history of three windows is 60 answers, not
600 or 3000). The seven bundles are trained, run through ``inference.py`` and packed once per test run; each
test then starts its own ``bentoml serve`` for two kinds, production and shadow (PAIRS).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from dkt.data.features import FeatureEncoder
from dkt.data.io import read_csv
from dkt.data.sequences import eval_stride, scoring_windows, window_start
from dkt.experiment import load_run_data, run
from dkt.predictor import load_predictor
from dkt.simulate import simulate, write
from tests.conftest import made_once
from tests.serving.servers import ROOT, bentoml_env, bentoml_service
from tests.support.scripts import Job, Result, ScriptBatch

KINDS = ("lstm", "lstmattn", "bert", "saint", "dkvmn", "lgbm", "ensemble")
COLS = ["assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]
SEQ_LEN = 20  # max_seq_len of the sequence models (shipped: 200); eval stride 10
LGBM_LEN = 30  # lgbm's (shipped: 1000): a different length, so the ensemble's members disagree on windows
# Narrower layers, fewer trees; only keys a shipped config has are changed (every layer count, head count,
# dropout and option stays as shipped). max_positions still covers SEQ_LEN.
SMALL_PARAMS = {"d_model": 16, "emb_dim": 8, "hidden_dim": 16, "n_heads": 2, "key_dim": 8, "value_dim": 8,
                "memory_size": 4, "max_positions": 64, "n_estimators": 30}  # fmt: skip


# ---------------------------------------------------------------- the windowing rule (fast)


@pytest.mark.parametrize("max_len", [1, 2, 7, 10, 50])
def test_window_start_depends_on_the_position_alone(max_len: int) -> None:
    stride = eval_stride(max_len)
    t = np.arange(0, 10 * max_len + 3)
    s = window_start(t, max_len)
    assert ((s <= t) & (t < s + max_len)).all()  # the window holds the position
    assert (s % stride == 0).all()
    # ...and is the earliest that does: one stride earlier would no longer reach t.
    assert ((s == 0) | (t >= s - stride + max_len)).all()
    assert (np.diff(s) >= 0).all()
    assert window_start(10, 10).item() == 5 and window_start(9, 10).item() == 0 and window_start(15, 10).item() == 10


def test_scoring_windows_score_each_target_once_in_its_window() -> None:
    n_rows = {"a": 23, "b": 7, "c": 1}
    df = pd.DataFrame(
        [
            {
                "userID": u,
                "assessmentItemID": f"A{i % 5:09d}",
                "testId": "A000000001",
                "answerCode": i % 2,
                "Timestamp": pd.Timestamp("2020-01-01") + pd.Timedelta(minutes=i),
                "KnowledgeTag": i % 3,
            }
            for u, n in n_rows.items()
            for i in range(n)
        ]
    )
    ff = FeatureEncoder.fit(df).transform(df)
    for targets in (None, ff.user_starts[1:] - 1, np.array([0, 9, 10, 14, 15, 22, 29])):
        w = scoring_windows(ff, 10, targets)
        want = np.arange(len(ff)) if targets is None else targets
        scored = w.index[w.score]
        assert sorted(scored.tolist()) == sorted(want.tolist())  # each target exactly once
        for k, pos in zip(*np.nonzero(w.score), strict=True):
            r = w.index[k, pos]
            first = ff.user_starts[np.searchsorted(ff.user_starts, r, side="right") - 1]
            s = first + window_start(r - first, 10)
            np.testing.assert_array_equal(w.index[k, : pos + 1], np.arange(s, r + 1))


def test_candidate_path_equals_predict_rows_past_max_seq_len(lstm_bundle: Path, sim_dir: Path) -> None:
    """In-process, no server: a candidate at each position of a long history gets that row's offline score."""
    p = load_predictor(lstm_bundle)
    df = read_csv(sim_dir / "test.csv")
    long = chain_users(df, 3 * p.max_seq_len + 11, "long")
    offline = p.predict_rows(long)
    for t in (0, 1, 24, 25, 49, 50, 74, 75, 99, 100, 3 * p.max_seq_len + 10):
        history, row = long.iloc[:t], long.iloc[t]
        cand = pd.DataFrame([row[["assessmentItemID", "testId", "KnowledgeTag"]]])
        got = p.predict_candidates(history, cand, row["Timestamp"])
        assert got[0] == pytest.approx(offline[t], abs=1e-6), t
        # an `at` before the end of the history scores from the answers known by then, as offline
        later = pd.concat([history, long.iloc[t + 1 : t + 5]])
        assert p.predict_candidates(later, cand, row["Timestamp"])[0] == pytest.approx(got[0], abs=1e-6)


# ---------------------------------------------------------------- the data


def chain_users(df: pd.DataFrame, n: int, user: str) -> pd.DataFrame:
    """One ``n``-answer student made of the sessions of real simulated students, one after another in time."""
    parts, end, total = [], pd.Timestamp("2020-01-01"), 0
    while total < n:
        for _, rows in df.sort_values(["userID", "Timestamp"], kind="stable").groupby("userID", sort=True):
            rows = rows.assign(Timestamp=rows["Timestamp"] - rows["Timestamp"].iloc[0] + end + pd.Timedelta(days=1))
            end = rows["Timestamp"].iloc[-1]
            parts.append(rows)
            total += len(rows)
            if total >= n:
                break
    return pd.concat(parts, ignore_index=True).head(n).assign(userID=user).reset_index(drop=True)


def small_configs(out: Path) -> None:
    """config/<kind>.json for every kind, made small (SMALL_PARAMS, SEQ_LEN, LGBM_LEN), written to ``out``;
    the ensemble's members name their configs by file, so they resolve to the small ones beside it."""
    out.mkdir()
    for kind in KINDS:
        cfg = json.loads((ROOT / "config" / f"{kind}.json").read_text())
        params = cfg.get("model_params", {})
        cfg["model_params"] = {k: SMALL_PARAMS.get(k, v) for k, v in params.items()}
        train, small_len = cfg["train"], LGBM_LEN if kind == "lgbm" else SEQ_LEN
        if "window_stride" in train:  # the same share of the shorter window
            train["window_stride"] = max(1, train["window_stride"] * small_len // train["max_seq_len"])
        train["max_seq_len"] = small_len
        (out / f"{kind}.json").write_text(json.dumps(cfg))


def to_predict(test: pd.DataFrame) -> pd.DataFrame:
    """Histories with answerCode -1 rows: two chained students three windows long, with -1 rows at and beside
    the window boundaries (stride S = L / 2: S-1, S, L-1, L, L+S, 2L+1, ...) and at the end; three real
    students with -1 rows at the start, the middle and the end."""
    s = SEQ_LEN // 2
    users = sorted(test["userID"].unique())
    plans = [
        (chain_users(test, 3 * LGBM_LEN + 40, "long-lgbm"),
         [SEQ_LEN - 1, SEQ_LEN, LGBM_LEN + 7, 2 * LGBM_LEN - 1, 3 * LGBM_LEN + 39]),
        (chain_users(test, 3 * SEQ_LEN + 50, "long-seq"),
         [s - 1, s, SEQ_LEN - 1, SEQ_LEN, SEQ_LEN + s - 1, SEQ_LEN + s, 2 * SEQ_LEN + 1, 3 * SEQ_LEN - 1,
          3 * SEQ_LEN + 49]),
        *[(test[test["userID"] == u].reset_index(drop=True), [0, 5, 40]) for u in users[:3]],
    ]  # fmt: skip
    parts = []
    for rows, positions in plans:
        positions = [p for p in positions if p < len(rows)]
        rows = rows.head(positions[-1] + 1).copy()
        rows.loc[positions, "answerCode"] = -1
        parts.append(rows[["userID", *COLS]])
    return pd.concat(parts, ignore_index=True)


def make_kit(out: Path) -> None:
    """Data, seven small bundles, inference.py's file for each and a BentoML store holding all seven.

    Trained here, in this process (the test is about serving, not train.py); inference.py and packer.py run as
    the scripts they are, in two child processes side by side (tests/support/scripts.py: one start-up each)."""
    write(simulate(40, seed=11), out / "sim", test_ratio=0.3, seed=11)
    table = to_predict(read_csv(out / "sim" / "test.csv"))
    table.to_csv(out / "to_predict.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
    small_configs(out / "config")
    data = load_run_data(out / "sim" / "train.csv", out / "sim" / "test.csv", None, "csv", 0.15, seed=0)
    for kind in KINDS:
        run(out / "config" / f"{kind}.json", data, out / "bundles" / kind, epochs=1, device="cpu", seed=0,
            model_version=f"parity-{kind}", progress=False)  # fmt: skip
    infer = [
        Job("inference.py", ["--model-dir", str(out / "bundles" / k), "--data-file", str(out / "to_predict.csv"),
                             "--output", str(out / "predictions" / f"{k}.csv")])
        for k in KINDS
    ]  # fmt: skip
    pack = [Job("packer.py", ["--model-dir", str(out / "bundles" / k), "--no-bento"]) for k in KINDS]
    (out / "predictions").mkdir()
    batches = [
        ScriptBatch.start(infer, os.environ, out / "infer-batch"),
        ScriptBatch.start(pack, bentoml_env(out / "bentoml"), out / "pack-batch"),
    ]
    results = {name: batch.wait() for name, batch in zip(("infer", "pack"), batches, strict=True)}
    (out / "results.json").write_text(
        json.dumps({name: {k: vars(r) for k, r in zip(KINDS, rs, strict=True)} for name, rs in results.items()})
    )


@dataclass
class Kit:
    root: Path

    @property
    def file(self) -> Path:  # canonical CSV with answerCode -1 rows
        return self.root / "to_predict.csv"

    @cached_property
    def table(self) -> pd.DataFrame:  # that file as read
        return read_csv(self.file)

    def bundle(self, kind: str) -> Path:
        return self.root / "bundles" / kind

    def result(self, step: str, kind: str) -> Result:
        return Result(**json.loads((self.root / "results.json").read_text())[step][kind])


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return Kit(made_once(tmp_path_factory, "parity-kit", make_kit))


def test_small_configs_keep_every_shipped_option_and_the_long_histories(sim_dir: Path, tmp_path: Path) -> None:
    """What makes the small parity run stand for the shipped configs: same model kinds, members, layer and head
    counts and options; only widths, tree counts and lengths shrink; histories still span three windows."""
    small_configs(tmp_path / "config")
    for kind in KINDS:
        shipped = json.loads((ROOT / "config" / f"{kind}.json").read_text())
        small = json.loads((tmp_path / "config" / f"{kind}.json").read_text())
        assert small.keys() == shipped.keys() and small["model"] == shipped["model"]
        assert small.get("members") == shipped.get("members")
        assert small["model_params"].keys() == shipped["model_params"].keys()
        changed = {k for k, v in small["model_params"].items() if v != shipped["model_params"][k]}
        assert changed <= set(SMALL_PARAMS), changed
        sized = ("max_seq_len", "window_stride")
        assert {k: v for k, v in small["train"].items() if k not in sized} == {
            k: v for k, v in shipped["train"].items() if k not in sized
        }
        stride = [c["train"].get("window_stride", c["train"]["max_seq_len"] // 2) / c["train"]["max_seq_len"]
                  for c in (small, shipped)]  # fmt: skip
        assert stride[0] == stride[1], (kind, stride)
    table = to_predict(read_csv(sim_dir / "test.csv"))
    sizes = table.groupby("userID").size()
    assert sizes["long-lgbm"] >= 3 * LGBM_LEN and sizes["long-seq"] >= 3 * SEQ_LEN
    minus = table.groupby("userID")["answerCode"].apply(lambda a: np.flatnonzero(a.to_numpy() == -1).tolist())
    assert minus["long-seq"][:4] == [SEQ_LEN // 2 - 1, SEQ_LEN // 2, SEQ_LEN - 1, SEQ_LEN]  # at the boundaries
    assert all(len(m) >= 2 for m in minus)  # a -1 row mid-history in every history, not only at its end


def requests_for(table: pd.DataFrame) -> list[tuple[int, dict]]:
    """(file row, /predict body) for every -1 row: the rows before it, the item as candidate, at = its time."""
    out = []
    for _, rows in table.groupby("userID", sort=False):
        rows = rows.sort_values("Timestamp", kind="stable")
        records = [
            {
                "assessmentItemID": r.assessmentItemID,
                "testId": r.testId,
                "answerCode": int(r.answerCode),
                "Timestamp": str(r.Timestamp),
                "KnowledgeTag": int(r.KnowledgeTag),
            }
            for r in rows.itertuples()
        ]
        for pos, (idx, r) in enumerate(zip(rows.index, rows.itertuples(), strict=True)):
            if r.answerCode == -1:
                cand = {"assessmentItemID": r.assessmentItemID, "testId": r.testId, "KnowledgeTag": int(r.KnowledgeTag)}
                out.append((int(idx), {"history": records[:pos], "candidates": [cand], "at": str(r.Timestamp)}))
    return out


# ---------------------------------------------------------------- every model kind, served for real

# Kinds served together by one `bentoml serve`: the first as production, the second as its shadow
# (DKT_SHADOW_MODEL_TAG), so 4 server starts cover the 7 kinds instead of 7 (each start is a supervisor and a worker
# importing BentoML and torch, 8-10 CPU-s). A shadow is loaded by the same load_predictor and scores the same frames
# through the same predict_candidates_batch call as production (serving/shadow.py: score_batch), so its
# probabilities in the response's ``shadow`` field are the kind's served output as much as production's are; the
# production path without a shadow (no fixed ``at``) is dkvmn's, served alone.
PAIRS = (("lstm", "lstmattn"), ("bert", "saint"), ("ensemble", "lgbm"), ("dkvmn", None))


def test_pairs_cover_every_kind_once() -> None:
    served = [kind for pair in PAIRS for kind in pair if kind]
    assert sorted(served) == sorted(KINDS)


def inferred_file(kit: Kit, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """inference.py's probabilities for the -1 rows (file order), the predictor's own for every row, the -1 rows'
    positions, and the tag packer.py stored the bundle under; asserts the file equals the predictor's output."""
    bundle = kit.bundle(kind)
    max_len = json.loads((bundle / "bundle.json").read_text())["max_seq_len"]
    assert kit.table.groupby("userID").size().max() >= 3 * max_len  # the long case is really exercised

    inferred = kit.result("infer", kind)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    written = pd.read_csv(kit.root / "predictions" / f"{kind}.csv")["prediction"].to_numpy()  # -1 rows, file order
    offline = load_predictor(bundle).predict_rows(kit.table)  # what inference.py computes, unrounded
    targets = np.flatnonzero(kit.table["answerCode"].to_numpy() == -1)
    np.testing.assert_allclose(written, offline[targets], atol=1e-6)  # 6 decimals in the file

    packed = kit.result("pack", kind)
    assert packed.returncode == 0, packed.stderr[-3000:]
    return written, offline, targets, packed.stdout.strip().splitlines()[-1].split(": ", 1)[1]


def check_served(kit: Kit, kind: str, file: tuple, served: dict[int, float], meta: dict) -> None:
    """The service's probabilities for ``kind`` (by file row) equal the offline ones (``file``: inferred_file's)
    within 1e-5; ``meta`` (the /metadata document, or its ``shadow`` part) names the bundle's version and lineage."""
    written, offline, targets, _ = file
    assert sorted(served) == targets.tolist()
    got = np.array([served[i] for i in targets])
    delta = np.abs(got - offline[targets])
    max_len = json.loads((kit.bundle(kind) / "bundle.json").read_text())["max_seq_len"]
    print(f"\nparity {kind}: max |delta| = {delta.max():.2e} over {len(targets)} rows (max_seq_len {max_len})")
    assert delta.max() <= 1e-5, f"{kind}: worst row {int(targets[delta.argmax()])}, |delta| {delta.max():.2e}"
    np.testing.assert_allclose(got, written, atol=1e-5)
    bundle_meta = json.loads((kit.bundle(kind) / "bundle.json").read_text())
    assert meta["model_version"] == f"parity-{kind}" and meta["seed"] == 0  # lineage of what is served
    assert meta["config_hash"] == bundle_meta["config_hash"]


@pytest.mark.slow
@pytest.mark.parametrize("kind,shadow", PAIRS, ids=[f"{k}+{s}" if s else k for k, s in PAIRS])
def test_inference_file_equals_live_service(kind: str, shadow: str | None, kit: Kit, tmp_path: Path) -> None:
    files = {k: inferred_file(kit, k) for k in (kind, shadow) if k}
    tag, shadow_tag = files[kind][3], files[shadow][3] if shadow else None
    # Its own copy of the store: `bentoml serve` writes its metrics files under BENTOML_HOME, and a test on
    # the other xdist worker may serve from the kit at the same time.
    home = tmp_path / "bentoml"
    shutil.copytree(kit.root / "bentoml" / "models", home / "models", symlinks=True)
    env = bentoml_env(home, tag)
    if shadow_tag:
        env["DKT_SHADOW_MODEL_TAG"] = shadow_tag
    served: dict[int, float] = {}
    shadowed: dict[int, float] = {}
    with bentoml_service("service:DKTService", env, tmp_path / "bentoml.log") as server:
        meta = requests.get(server.url + "/metadata", timeout=30).json()
        for idx, body in requests_for(kit.table):
            r = requests.post(server.url + "/predict", json=body, timeout=120)
            assert r.status_code == 200, r.text
            served[idx] = r.json()["predictions"][0]["probability"]
            if shadow:
                shadowed[idx] = r.json()["shadow"]["probabilities"][0]
    check_served(kit, kind, files[kind], served, meta)
    assert meta["config"] == json.loads((kit.bundle(kind) / "config.json").read_text())
    if shadow:
        check_served(kit, shadow, files[shadow], shadowed, meta["shadow"])
    else:
        assert "shadow" not in meta
