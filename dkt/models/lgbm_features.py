"""LightGBM's inputs: causal, engineered per-row features and the item / test / skill difficulty statistics.

Every feature of a row uses only that row's item and the same user's answers
*before* it (in time order), plus difficulty statistics of items, tests and
skills fitted on training data. For training rows those statistics are
out-of-fold (``out_of_fold_stats``): users are split into folds and a row's
statistics come from the other folds only, so no row's own label (nor any answer
of the same user) reaches its features. Rows seen at serving time use the
statistics of the whole training set (``serving_stats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from dkt.data.features import CONTINUOUS, FeatureEncoder, FeatureFrame
from dkt.data.order import ORDER, OrderState, order_features

STAT_KEYS: tuple[str, ...] = ("item", "test", "tag")
RECENT_WINDOWS: tuple[int, ...] = (5, 20)


# ---------------------------------------------------------------- difficulty statistics


@dataclass
class TargetStats:
    """Answer counts per item / test / skill: ``{key: {value: [n, correct]}}`` plus the global mean."""

    counts: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    mean: float = 0.5

    @classmethod
    def fit(cls, raw: dict[str, np.ndarray], answer: np.ndarray) -> TargetStats:
        known = answer >= 0
        y = answer[known].astype(np.float64)
        counts = {}
        for key in STAT_KEYS:
            g = pd.DataFrame({"k": raw[key][known], "y": y}).groupby("k")["y"].agg(["count", "sum"])
            counts[key] = {str(k): [float(n), float(s)] for k, (n, s) in zip(g.index, g.to_numpy(), strict=True)}
        return cls(counts=counts, mean=float(y.mean()) if len(y) else 0.5)

    def lookup(self, key: str, values: np.ndarray, prior_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed P(correct) and log answer count for each value (unseen values: the global mean, count 0)."""
        table = self.counts.get(key, {})
        uniq, inv = np.unique(values, return_inverse=True)
        nc = np.array([table.get(str(v), (0.0, 0.0)) for v in uniq], dtype=np.float64).reshape(-1, 2)
        n, c = nc[:, 0], nc[:, 1]
        smoothed = (c + prior_weight * self.mean) / np.maximum(n + prior_weight, 1e-12)
        p = np.where(n + prior_weight > 0, smoothed, self.mean)
        return p[inv], np.log1p(n)[inv]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "mean": self.mean}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetStats:
        return cls(counts=d["counts"], mean=float(d["mean"]))


# ---------------------------------------------------------------- features


@dataclass
class Rows:
    """A table sorted by (user, time) as ``FeatureEncoder.transform`` sorts it, with the raw keys."""

    order: np.ndarray  # sorted position -> input row
    answer: np.ndarray
    group: np.ndarray  # user number per sorted row
    new_user: np.ndarray
    raw: dict[str, np.ndarray]
    base: pd.DataFrame  # the encoder's features, one column each


def sort_rows(encoder: FeatureEncoder, df: pd.DataFrame) -> Rows:
    return rows_from_frame(encoder.transform(df), df)


def rows_from_frame(ff: FeatureFrame, df: pd.DataFrame) -> Rows:
    """``Rows`` of the table ``df`` that ``ff`` encodes (the serving path builds ``ff`` itself)."""
    d = df.iloc[ff.row_index]
    item = d["assessmentItemID"].astype(str).to_numpy()
    raw = {
        "item": item,
        "test": d["testId"].astype(str).to_numpy(),
        "tag": d["KnowledgeTag"].astype(str).to_numpy(),
        "paper": np.asarray([s[1:7] for s in item], dtype=object),
    }
    group = np.repeat(np.arange(len(ff.users)), ff.user_lengths)
    new_user = np.zeros(len(ff), dtype=bool)
    new_user[ff.user_starts[:-1]] = True
    return Rows(ff.row_index, ff.answer, group, new_user, raw, base_features(ff))


def base_features(ff: FeatureFrame) -> pd.DataFrame:
    """The encoder's features LightGBM reads, one column each, per row of ``ff``."""
    prev = ff.resp["prev_answer"]  # UNK: first answer, FIRST / FIRST+1: wrong / right, FIRST+2: unlabelled
    return pd.DataFrame(
        {
            "tag": ff.cat["tag"],
            "head": ff.cat["head"],
            "tail": ff.cat["tail"],
            "elapsed_bucket": ff.cat["elapsed"],
            "prev_answer": np.where((prev == 2) | (prev == 3), prev - 2, np.nan),
            **{name: ff.cont[:, i] for i, name in enumerate(CONTINUOUS)},
        }
    )


def _exclusive_cumsum(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per key, the sum of ``x`` over earlier rows (rows are already in time order within a key)."""
    return pd.Series(x).groupby(keys).cumsum().to_numpy() - x


def _key(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    codes, _ = pd.factorize(values)
    return group.astype(np.int64) * (codes.max(initial=0) + 1) + codes


def causal_features(rows: Rows, stats_per_row: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """All model inputs of each sorted row; ``stats_per_row[key]`` = (smoothed P, log count) per row."""
    known = (rows.answer >= 0).astype(np.float64)
    y = np.where(rows.answer >= 0, rows.answer, 0).astype(np.float64)
    f = rows.base.copy()
    n_prev = _exclusive_cumsum(known, rows.group)
    f["user_n"] = n_prev
    f["user_acc_raw"] = np.where(n_prev > 0, _exclusive_cumsum(y, rows.group) / np.maximum(n_prev, 1), np.nan)
    for name in ("test", "paper", "item"):
        k = _key(rows.group, rows.raw[name])
        n = _exclusive_cumsum(known, k)
        f[f"{name}_seen"] = n
        f[f"{name}_acc"] = np.where(n > 0, _exclusive_cumsum(y, k) / np.maximum(n, 1), np.nan)
    # Recent accuracy over the last w labelled answers: prefix sums over labelled rows only.
    cum_known = np.cumsum(known) - known  # labelled rows before this one, over the whole sorted table
    cum_y = np.concatenate([[0.0], np.cumsum(y[known > 0])])
    user_first = cum_known[np.flatnonzero(rows.new_user)][rows.group].astype(np.int64)
    end = cum_known.astype(np.int64)
    for w in RECENT_WINDOWS:
        start = np.maximum(user_first, end - w)
        n = end - start
        f[f"recent{w}_acc"] = np.where(n > 0, (cum_y[end] - cum_y[start]) / np.maximum(n, 1), np.nan)
    for key in STAT_KEYS:
        p, logn = stats_per_row[key]
        f[f"{key}_p"] = p
        f[f"{key}_logn"] = logn
    # Ability relative to difficulty: the user's mean residual on earlier items.
    resid = (y - stats_per_row["item"][0]) * known
    f["user_resid"] = np.where(n_prev > 0, _exclusive_cumsum(resid, rows.group) / np.maximum(n_prev, 1), np.nan)
    tag_k = _key(rows.group, rows.raw["tag"])
    tag_n = _exclusive_cumsum(known, tag_k)
    f["tag_resid"] = np.where(tag_n > 0, _exclusive_cumsum(resid, tag_k) / np.maximum(tag_n, 1), np.nan)
    recency = recency_features(rows.group, rows.raw["tag"], rows.answer)
    for name, col in recency.items():
        f[name] = col
    return f


# ---------------------------------------------------------------- recency: the order of a student's answers

# The counts above are order-blind; these read the order of a student's answers (dkt.data.order). On ASSISTments 2009
# they take this model from 0.8078 to 0.8197 test AUC, and the ensemble from 0.8293 to 0.8303 (docs/lgbm-ensemble.md).
RECENCY: tuple[str, ...] = ORDER


def recency_features(group: np.ndarray, tag: np.ndarray, answer: np.ndarray) -> dict[str, np.ndarray]:
    """``RECENCY`` of each sorted row from the same user's labelled answers before it (``group``: user number per
    row, ``tag``: raw skill); ``RunningCounts`` steps the same functions, so the two agree bit for bit."""
    values = order_features(group, tag, answer)
    return {name: values[:, j] for j, name in enumerate(RECENCY)}


# ---------------------------------------------------------------- the same features, one answer at a time

SEEN_KEYS: tuple[str, ...] = ("test", "paper", "item")


def _ratio(total: float, n: float) -> float:
    return total / max(n, 1) if n > 0 else np.nan


@dataclass(frozen=True)
class RunningCounts:
    """What ``causal_features`` reads of a student's earlier answers, updated one answer at a time: sums in
    the order ``causal_features``' cumulative sums add them, so the features come out bit for bit the same.
    A value: ``after`` returns a new one."""

    n: float = 0.0  # labelled answers
    y: float = 0.0  # correct ones
    seen: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=lambda: {k: {} for k in SEEN_KEYS})
    recent: tuple[float, ...] = ()  # the last max(RECENT_WINDOWS) labelled answers, oldest first
    resid: float = 0.0  # sum of (answer - item difficulty) over labelled answers
    tag_resid: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # raw tag -> (labelled, resid)
    order: OrderState = field(default_factory=OrderState)  # ``RECENCY``'s state, keyed by the raw tag

    def after(self, raw: Mapping[str, str], code: int, p_item: float) -> RunningCounts:
        """After one answer: ``raw`` its item / test / tag / paper, ``p_item`` its item's smoothed P(correct)."""
        known = 1.0 if code >= 0 else 0.0
        y = float(code) if code >= 0 else 0.0
        resid = (y - p_item) * known
        seen = {}
        for key in SEEN_KEYS:
            n, c = self.seen[key].get(raw[key], (0.0, 0.0))
            seen[key] = {**self.seen[key], raw[key]: (n + known, c + y)}
        n, r = self.tag_resid.get(raw["tag"], (0.0, 0.0))
        recent = (*self.recent, y)[-max(RECENT_WINDOWS) :] if known else self.recent
        return replace(
            self,
            n=self.n + known,
            y=self.y + y,
            seen=seen,
            recent=recent,
            resid=self.resid + resid,
            tag_resid={**self.tag_resid, raw["tag"]: (n + known, r + resid)},
            order=self.order.after(raw["tag"], y) if known else self.order,
        )

    @classmethod
    def of(cls, raw: Mapping[str, np.ndarray], answer: np.ndarray, p_item: np.ndarray) -> RunningCounts:
        """The counts after a whole history in one pass (rows in time order; ``after`` for each, summed alike)."""
        n = y = resid = 0.0
        seen: dict[str, dict[str, tuple[float, float]]] = {key: {} for key in SEEN_KEYS}
        tag_resid: dict[str, tuple[float, float]] = {}
        labelled: list[float] = []
        for i, code in enumerate(answer.tolist()):
            known = 1.0 if code >= 0 else 0.0
            yi = float(code) if code >= 0 else 0.0
            ri = (yi - float(p_item[i])) * known
            n, y, resid = n + known, y + yi, resid + ri
            for key in SEEN_KEYS:
                v = str(raw[key][i])
                kn, kc = seen[key].get(v, (0.0, 0.0))
                seen[key][v] = (kn + known, kc + yi)
            t = str(raw["tag"][i])
            tn, tr = tag_resid.get(t, (0.0, 0.0))
            tag_resid[t] = (tn + known, tr + ri)
            if known:
                labelled.append(yi)
        recent = tuple(labelled[-max(RECENT_WINDOWS) :])
        order = OrderState.of([str(t) for t in raw["tag"]], answer)
        return cls(n=n, y=y, seen=seen, recent=recent, resid=resid, tag_resid=tag_resid, order=order)

    def features(
        self, base: pd.DataFrame, raw: dict[str, np.ndarray], stats: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> pd.DataFrame:
        """``causal_features`` of candidate rows after these answers: ``base`` their encoder features,
        ``raw`` their keys, ``stats`` their difficulty statistics (``serving_stats``)."""
        k = len(base)
        f = base.copy()
        f["user_n"] = np.full(k, self.n)
        f["user_acc_raw"] = np.full(k, _ratio(self.y, self.n))
        for key in SEEN_KEYS:
            nc = np.array([self.seen[key].get(str(v), (0.0, 0.0)) for v in raw[key]], dtype=np.float64).reshape(-1, 2)
            f[f"{key}_seen"] = nc[:, 0]
            f[f"{key}_acc"] = np.where(nc[:, 0] > 0, nc[:, 1] / np.maximum(nc[:, 0], 1), np.nan)
        for w in RECENT_WINDOWS:
            last = self.recent[-w:]
            f[f"recent{w}_acc"] = np.full(k, sum(last) / len(last) if last else np.nan)
        for key in STAT_KEYS:
            f[f"{key}_p"], f[f"{key}_logn"] = stats[key]
        f["user_resid"] = np.full(k, _ratio(self.resid, self.n))
        nr = np.array([self.tag_resid.get(str(v), (0.0, 0.0)) for v in raw["tag"]], dtype=np.float64).reshape(-1, 2)
        f["tag_resid"] = np.where(nr[:, 0] > 0, nr[:, 1] / np.maximum(nr[:, 0], 1), np.nan)
        order = self.order.rows([str(v) for v in raw["tag"]])  # (0, 8) for no candidates
        for j, name in enumerate(RECENCY):
            f[name] = order[:, j]
        return f


def serving_stats(rows: Rows, stats: TargetStats, prior_weight: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {key: stats.lookup(key, rows.raw[key], prior_weight) for key in STAT_KEYS}


def out_of_fold_stats(
    rows: Rows, n_folds: int, prior_weight: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Statistics for training rows from the *other* user folds only: a row never sees its own label."""
    rng = np.random.default_rng(seed)
    fold_of_user = rng.permutation(rows.group.max(initial=-1) + 1) % n_folds
    fold = fold_of_user[rows.group]
    out = {key: (np.zeros(len(fold)), np.zeros(len(fold))) for key in STAT_KEYS}
    for k in range(n_folds):
        inside = fold == k
        if not inside.any():
            continue
        others = TargetStats.fit({key: rows.raw[key][~inside] for key in STAT_KEYS}, rows.answer[~inside])
        for key in STAT_KEYS:
            p, logn = others.lookup(key, rows.raw[key][inside], prior_weight)
            out[key][0][inside] = p
            out[key][1][inside] = logn
    return out
