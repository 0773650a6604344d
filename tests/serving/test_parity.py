"""Train/serve parity: what inference.py writes for an answerCode -1 row is what /predict returns for it.

For every model kind in config/ (the shipped configs, 1 epoch on small simulated data): the probability
``inference.py`` writes for each -1 row equals what a running ``bentoml serve`` returns for the same
history (the user's rows before it), candidate and ``at`` (that row's Timestamp), within 1e-5, including
histories three times ``max_seq_len`` long and -1 rows in the middle of a history.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from dkt.data.features import FeatureEncoder
from dkt.data.io import read_csv
from dkt.data.sequences import eval_stride, scoring_windows, window_start
from dkt.experiment import RunData, load_run_data, run
from dkt.predictor import load_predictor
from dkt.simulate import simulate, write
from tests.serving.servers import PY, ROOT, bentoml_env, bentoml_service

KINDS = ("lstm", "lstmattn", "bert", "saint", "dkvmn", "lgbm", "ensemble")
COLS = ["assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]


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


@dataclass
class Parity:
    data: RunData
    file: Path  # canonical CSV with answerCode -1 rows
    table: pd.DataFrame  # that file as read


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> Parity:
    out = tmp_path_factory.mktemp("parity")
    write(simulate(70, seed=11), out, test_ratio=0.3, seed=11)
    data = load_run_data(out / "train.csv", out / "test.csv", None, "csv", 0.15, seed=0)
    test = read_csv(out / "test.csv")
    # (user, its rows, positions turned into -1; the last one ends the history)
    lgbm_len = json.loads((ROOT / "config" / "lgbm.json").read_text())["train"]["max_seq_len"]
    seq_len = json.loads((ROOT / "config" / "lstm.json").read_text())["train"]["max_seq_len"]
    users = sorted(test["userID"].unique())
    plans = [
        (chain_users(test, 3 * lgbm_len + 40, "long-lgbm"), [199, 200, 437, 1999, 3 * lgbm_len + 39]),
        (chain_users(test, 3 * seq_len + 50, "long-seq"), [99, 100, 199, 200, 299, 300, 401, 599, 3 * seq_len + 49]),
        *[(test[test["userID"] == u].reset_index(drop=True), [0, 5, 40]) for u in users[:3]],
    ]
    parts = []
    for rows, positions in plans:
        positions = [p for p in positions if p < len(rows)]
        rows = rows.head(positions[-1] + 1).copy()
        rows.loc[positions, "answerCode"] = -1
        parts.append(rows[["userID", *COLS]])
    table = pd.concat(parts, ignore_index=True)
    file = out / "to_predict.csv"
    table.to_csv(file, index=False, date_format="%Y-%m-%d %H:%M:%S")
    return Parity(data=data, file=file, table=read_csv(file))


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


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_inference_file_equals_live_service(kind: str, parity: Parity, tmp_path: Path) -> None:
    bundle = tmp_path / kind
    run(ROOT / "config" / f"{kind}.json", parity.data, bundle, epochs=1, device="cpu", seed=0,
        model_version=f"parity-{kind}", progress=False)  # fmt: skip
    max_len = json.loads((bundle / "bundle.json").read_text())["max_seq_len"]
    assert parity.table.groupby("userID").size().max() >= 3 * max_len  # the long case is really exercised

    written_file = tmp_path / "predictions.csv"
    cmd = ["inference.py", "--model-dir", str(bundle), "--data-file", str(parity.file), "--output", str(written_file)]
    proc = subprocess.run(
        [PY, *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = pd.read_csv(written_file)["prediction"].to_numpy()  # id order = -1 rows in file order
    offline = load_predictor(bundle).predict_rows(parity.table)  # what inference.py computes, unrounded
    targets = np.flatnonzero(parity.table["answerCode"].to_numpy() == -1)
    np.testing.assert_allclose(written, offline[targets], atol=1e-6)  # 6 decimals in the file

    home = tmp_path / "bentoml"
    packed = subprocess.run(
        [PY, "packer.py", "--model-dir", str(bundle), "--no-bento"],
        cwd=ROOT,
        env=bentoml_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert packed.returncode == 0, packed.stderr[-3000:]
    tag = packed.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    served = {}
    with bentoml_service("service:DKTService", bentoml_env(home, tag), tmp_path / "bentoml.log") as server:
        meta = requests.get(server.url + "/metadata", timeout=30).json()
        for idx, body in requests_for(parity.table):
            r = requests.post(server.url + "/predict", json=body, timeout=120)
            assert r.status_code == 200, r.text
            served[idx] = r.json()["predictions"][0]["probability"]
    assert sorted(served) == targets.tolist()
    got = np.array([served[i] for i in targets])
    delta = np.abs(got - offline[targets])
    print(f"\nparity {kind}: max |delta| = {delta.max():.2e} over {len(targets)} rows (max_seq_len {max_len})")
    assert delta.max() <= 1e-5, f"{kind}: worst row {int(targets[delta.argmax()])}, |delta| {delta.max():.2e}"
    np.testing.assert_allclose(got, written, atol=1e-5)
    assert meta["model_version"] == f"parity-{kind}" and meta["seed"] == 0  # lineage of what is served
    assert meta["config"] == json.loads((bundle / "config.json").read_text())
