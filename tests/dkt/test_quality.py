"""dkt.quality against independent references: sklearn's metrics, a per-bin loop for ECE, a per-resample loop for
the bootstrap (the same draws, each resample scored by sklearn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from dkt.quality import N_BINS, auc, quality, quality_table


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)  # rounded: many ties, which AUC must count one half
    y = (rng.random(n) < p).astype(int)
    return p, y


def ece_reference(p: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for b in range(N_BINS):
        inside = (p >= b / N_BINS) & ((p < (b + 1) / N_BINS) if b < N_BINS - 1 else (p <= 1.0))
        if inside.any():
            total += inside.sum() * abs(p[inside].mean() - y[inside].mean())
    return total / len(p)


def test_point_metrics_match_sklearn_and_a_per_bin_loop() -> None:
    p, y = sample(5000, 1)
    q = quality(p, y)
    assert q.n == 5000
    assert q.auc == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert q.logloss == pytest.approx(log_loss(y, p), abs=1e-9)
    assert q.accuracy == pytest.approx(np.mean((p >= 0.5) == (y == 1)), abs=1e-12)
    assert q.ece == pytest.approx(ece_reference(p, y), abs=1e-12)
    assert [b.n for b in q.reliability] == [int(((p * 10).astype(int).clip(max=9) == b).sum()) for b in range(10)]
    top = q.reliability[-1]  # p = 1.0 belongs to the last bin
    assert top.lo == 0.9 and top.hi == 1.0 and top.n == int((p >= 0.9).sum())
    assert top.observed == pytest.approx(y[p >= 0.9].mean())
    assert auc(p, y) == q.auc


def test_undefined_and_bad_input() -> None:
    one_class = quality([0.3, 0.8, 0.8], [1, 1, 1], n_boot=20)
    assert one_class.auc is None and "auc" not in one_class.ci and one_class.accuracy == pytest.approx(2 / 3)
    empty = quality([], [])
    assert empty.n == 0 and empty.auc is None and empty.ece is None and all(b.n == 0 for b in empty.reliability)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        quality([1.2], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        quality([0.2], [2])
    with pytest.raises(ValueError, match="2 probabilities but 1 answers"):
        quality([0.2, 0.3], [1])


def test_bootstrap_is_the_percentiles_of_resamples_scored_one_by_one() -> None:
    p, y = sample(300, 2)
    q = quality(p, y, n_boot=40, seed=5)
    # The same draws: positions in the p-sorted sample (dkt.quality draws there to avoid a gather per resample).
    rng = np.random.default_rng(5)
    order = np.argsort(p, kind="stable")
    picks = order[rng.integers(0, len(p), size=(40, len(p)), dtype=np.int32)]
    aucs = [roc_auc_score(y[i], p[i]) for i in picks]
    losses = [log_loss(y[i], p[i]) for i in picks]
    eces = [ece_reference(p[i], y[i]) for i in picks]
    assert q.ci["auc"] == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-9)
    assert q.ci["logloss"] == pytest.approx(tuple(np.percentile(losses, [2.5, 97.5])), abs=1e-9)
    assert q.ci["ece"] == pytest.approx(tuple(np.percentile(eces, [2.5, 97.5])), abs=1e-9)
    assert q.ci["auc"][0] < q.auc < q.ci["auc"][1]  # type: ignore[operator]
    assert quality(p, y, n_boot=40, seed=5).ci == q.ci  # seeded
    assert quality(p, y, n_boot=40, seed=6).ci != q.ci


def test_bootstrap_in_blocks_gives_the_same_intervals_as_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    p, y = sample(400, 3)
    whole = quality(p, y, n_boot=50, seed=1).ci
    monkeypatch.setattr("dkt.quality.BOOT_CELLS", 400 * 7)  # blocks of 7 resamples
    blocked = quality(p, y, n_boot=50, seed=1).ci
    assert blocked.keys() == whole.keys()
    for k, interval in whole.items():
        assert blocked[k] == pytest.approx(interval, abs=1e-12)


def test_table_per_version_tag_and_day() -> None:
    p, y = sample(2000, 4)
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "model_version": rng.choice(["v1", "v2"], 2000),
            "probability": p,
            "answerCode": y,
            "KnowledgeTag": rng.choice([7, 9], 2000),
            "day": rng.choice(["2026-09-01", "2026-09-02"], 2000),
        }
    )
    overall = quality_table(df)
    assert [r["model_version"] for r in overall] == ["v1", "v2"]
    v1 = df[df["model_version"] == "v1"]
    assert overall[0]["n"] == len(v1)
    assert overall[0]["auc"] == pytest.approx(roc_auc_score(v1["answerCode"], v1["probability"]), abs=1e-9)
    by_tag = quality_table(df, by="tag", n_boot=10)
    assert [(r["model_version"], r["KnowledgeTag"]) for r in by_tag] == [("v1", 7), ("v1", 9), ("v2", 7), ("v2", 9)]
    assert sum(r["n"] for r in by_tag) == 2000 and all(set(r["ci"]) == {"auc", "logloss", "accuracy", "ece"}
                                                        for r in by_tag)  # fmt: skip
    by_day = quality_table(df, by="day")
    cell = df[(df["model_version"] == "v2") & (df["day"] == "2026-09-02")]
    assert by_day[3]["day"] == "2026-09-02" and by_day[3]["n"] == len(cell)
    assert by_day[3]["ece"] == pytest.approx(ece_reference(cell["probability"].to_numpy(),
                                                           cell["answerCode"].to_numpy()), abs=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="by must be one of tag, day"):
        quality_table(df, by="week")
    with pytest.raises(ValueError, match="lack column"):
        quality_table(df.drop(columns=["day"]))
    assert quality_table(df.iloc[:0]) == []
