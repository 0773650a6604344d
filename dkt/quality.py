"""Online quality of served predictions: AUC, log loss, accuracy, calibration (ECE, reliability curve), n.

Pure functions over arrays of predicted probabilities ``p`` and observed answers ``y`` (0/1), and over a
table of scored predictions grouped per model version (overall, per KnowledgeTag or per day). Used by
``dkt models quality`` and the client's ``/metrics`` (docs/monitoring.md).

Bootstrap intervals resample answers with replacement. A resample is a vector of counts (how often each
answer was drawn); with the answers sorted once by ``p``, every metric of a resample is a weighted sum over
that order, so a whole block of resamples is one matrix product or cumulative sum: no per-resample sort.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas only names quality_table's argument; `dkt models` imports BY from here (pandas: 0.8 s)
    import pandas as pd

N_BINS = 10  # reliability curve and ECE: equal-width bins over [0, 1]
EPS = 1e-15  # log loss clips probabilities to [EPS, 1 - EPS] (a service answering exactly 0 or 1)
METRICS = ("auc", "logloss", "accuracy", "ece")
BY = ("tag", "day")  # the breakdowns besides overall
COLUMNS = ("model_version", "probability", "answerCode", "KnowledgeTag", "day")  # what ``quality_table`` reads
BOOT_CELLS = 2_000_000  # resamples x answers per block: bounds each weight matrix (16 MB of float64)


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    n: int
    mean_probability: float | None  # None: no answer in this bin
    observed: float | None  # fraction answered correctly


@dataclass(frozen=True)
class Quality:
    n: int
    auc: float | None  # None: one class only (every answer right, or every answer wrong)
    logloss: float | None
    accuracy: float | None
    ece: float | None
    reliability: list[Bin]
    # metric -> (low, high): the bootstrap 95% interval; empty when not asked for or n < 2
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = {k: list(v) for k, v in self.ci.items()}
        return d


def _arrays(p: Iterable[float], y: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    pa = np.asarray(p, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if pa.shape != ya.shape:
        raise ValueError(f"{pa.size} probabilities but {ya.size} answers")
    if pa.size and (np.isnan(pa).any() or pa.min() < 0 or pa.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    if ya.size and not np.isin(ya, (0.0, 1.0)).all():
        raise ValueError("answers must be 0 or 1")
    return pa, ya


def bin_index(p: np.ndarray) -> np.ndarray:
    """The reliability bin of each probability: [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] (1.0 in the last)."""
    return np.minimum((p * N_BINS).astype(np.int64), N_BINS - 1)


def auc(p: Iterable[float], y: Iterable[int]) -> float | None:
    """ROC AUC (ties count one half, as sklearn's roc_auc_score); None when only one class is present."""
    pa, ya = _arrays(p, y)
    return _none_if_nan(float(_Sorted(pa, ya).metrics(np.ones((1, pa.size)))["auc"][0])) if pa.size else None


class _Sorted:
    """Scored answers sorted by ``p`` once, with what every metric needs per answer in that order.

    Weights (resamples x answers) are given in this order: a bootstrap draws positions of the sorted
    sample, which is the same distribution as drawing the answers themselves, without a gather per draw.
    """

    def __init__(self, p: np.ndarray, y: np.ndarray) -> None:
        order = np.argsort(p, kind="stable")
        self.p, self.y = p[order], y[order]
        self.n = p.size
        self.starts = np.flatnonzero(np.r_[True, self.p[1:] != self.p[:-1]])  # each group of equal scores
        pc = np.clip(self.p, EPS, 1.0 - EPS)
        self.loss = -(self.y * np.log(pc) + (1.0 - self.y) * np.log1p(-pc))
        self.right = ((self.p >= 0.5) == (self.y == 1.0)).astype(np.float64)
        # (answers x bins): the signed gap p - y of each answer in its reliability bin's column.
        self.gap = np.zeros((self.n, N_BINS))
        self.gap[np.arange(self.n), bin_index(self.p)] = self.p - self.y

    def metrics(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for each row of weights ``w``; undefined values are NaN."""
        pos = np.add.reduceat(w * self.y, self.starts, axis=1)
        neg = np.add.reduceat(w, self.starts, axis=1) - pos
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower than each tie group
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        n = n_pos + n_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            auc_ = np.einsum("ij,ij->i", pos, below + 0.5 * neg) / (n_pos * n_neg)
            auc_[(n_pos == 0) | (n_neg == 0)] = np.nan
            return {
                "auc": auc_,
                "logloss": w @ self.loss / n,
                "accuracy": w @ self.right / n,
                "ece": np.abs(w @ self.gap).sum(axis=1) / n,
            }

    def resample(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """``rows`` bootstrap resamples as counts per (sorted) answer; one bincount per row stays in cache."""
        w = np.empty((rows, self.n))
        for i, picks in enumerate(rng.integers(0, self.n, size=(rows, self.n), dtype=np.int32)):  # half int64's
            w[i] = np.bincount(picks, minlength=self.n)
        return w


def _reliability(p: np.ndarray, y: np.ndarray) -> list[Bin]:
    idx = bin_index(p)
    counts = np.bincount(idx, minlength=N_BINS)
    sum_p = np.bincount(idx, weights=p, minlength=N_BINS)
    sum_y = np.bincount(idx, weights=y, minlength=N_BINS)
    return [
        Bin(
            lo=b / N_BINS,
            hi=(b + 1) / N_BINS,
            n=int(counts[b]),
            mean_probability=float(sum_p[b] / counts[b]) if counts[b] else None,
            observed=float(sum_y[b] / counts[b]) if counts[b] else None,
        )
        for b in range(N_BINS)
    ]


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def quality(p: Iterable[float], y: Iterable[int], n_boot: int = 0, seed: int = 0, level: float = 0.95) -> Quality:
    """The metrics of one set of scored answers; with ``n_boot`` > 0, percentile bootstrap intervals at ``level``.

    Seeded: the same answers, ``n_boot`` and ``seed`` give the same intervals.
    """
    pa, ya = _arrays(p, y)
    n = int(pa.size)
    if n == 0:
        return Quality(0, None, None, None, None, _reliability(pa, ya))
    data = _Sorted(pa, ya)
    point = {k: float(v[0]) for k, v in data.metrics(np.ones((1, n))).items()}
    ci: dict[str, tuple[float, float]] = {}
    if n_boot > 0 and n >= 2:
        rng = np.random.default_rng(seed)
        block = max(1, BOOT_CELLS // n)
        draws: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
        for start in range(0, n_boot, block):
            for k, v in data.metrics(data.resample(rng, min(block, n_boot - start))).items():
                draws[k].append(v)
        tail = 100.0 * (1.0 - level) / 2.0
        for k in METRICS:
            values = np.concatenate(draws[k])
            values = values[~np.isnan(values)]
            if values.size:
                lo, hi = np.percentile(values, [tail, 100.0 - tail])
                ci[k] = (float(lo), float(hi))
    return Quality(
        n=n,
        auc=_none_if_nan(point["auc"]),
        logloss=point["logloss"],
        accuracy=point["accuracy"],
        ece=point["ece"],
        reliability=_reliability(pa, ya),
        ci=ci,
    )


def quality_table(scored: pd.DataFrame, by: str | None = None, n_boot: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """One row per model version (and per KnowledgeTag or day with ``by``), sorted by those keys.

    ``scored`` has ``COLUMNS``: one row per prediction whose answer arrived (``day``: the answer's UTC date,
    ``YYYY-MM-DD``). Each row: the keys, then ``Quality.to_dict()``.
    """
    if by is not None and by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
    missing = [c for c in COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(f"scored predictions lack column(s) {', '.join(missing)}")
    keys = ["model_version"] + ({"tag": ["KnowledgeTag"], "day": ["day"]}[by] if by else [])
    rows: list[dict[str, Any]] = []
    for values, group in scored.groupby(keys, sort=True):
        q = quality(group["probability"].to_numpy(), group["answerCode"].to_numpy(), n_boot=n_boot, seed=seed)
        key = dict(zip(keys, values, strict=True))
        if "KnowledgeTag" in key:
            key["KnowledgeTag"] = int(key["KnowledgeTag"])
        rows.append({**key, **q.to_dict()})
    return rows
