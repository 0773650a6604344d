"""LightGBM baseline: gradient-boosted trees on causal, engineered per-row features.

Every feature of a row uses only that row's item and the same user's answers
*before* it (in time order), plus difficulty statistics of items, tests and
skills fitted on training data. For training rows those statistics are
out-of-fold: users are split into folds and a row's statistics come from the
other folds only, so no row's own label (nor any answer of the same user)
reaches its features. Rows seen at serving time use the statistics of the whole
training set, saved beside the model in ``lgbm_stats.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dkt.bundle import write_json
from dkt.config import ConfigError, ExperimentConfig
from dkt.data.features import CONTINUOUS, FeatureEncoder, FeatureFrame
from dkt.metrics import auc
from dkt.predictor import Job, Predictor, encode_candidates

MODEL_FILE = "model.lgb"
STATS_FILE = "lgbm_stats.json"
STAT_KEYS: tuple[str, ...] = ("item", "test", "tag")
RECENT_WINDOWS: tuple[int, ...] = (5, 20)
# Categorical codes LightGBM may split on as categories; the rest are numeric.
CATEGORICAL_FEATURES: tuple[str, ...] = ("tag", "head")


class LGBMParams(BaseModel):
    """``model_params`` of ``config/lgbm.json``; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    num_leaves: int = Field(31, ge=2, le=4096)
    learning_rate: float = Field(0.05, gt=0, le=1)
    n_estimators: int = Field(500, ge=1, description="maximum boosting rounds")
    min_child_samples: int = Field(50, ge=1)
    subsample: float = Field(0.8, gt=0, le=1, description="row share per bagging round")
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_bin: int = Field(255, ge=2)
    early_stopping_rounds: int = Field(30, ge=1, description="rounds without validation AUC gain before stopping")
    n_jobs: int = Field(2, ge=1, description="LightGBM threads")
    n_folds: int = Field(5, ge=2, description="user folds for out-of-fold difficulty statistics")
    prior_weight: float = Field(10.0, ge=0, description="pseudo-count pulling rare items' difficulty to the mean")
    log_every: int = Field(50, ge=0, description="print validation AUC every N rounds (0: never)")


def parse_params(params: dict[str, Any]) -> LGBMParams:
    try:
        return LGBMParams.model_validate(params)
    except ValidationError as exc:
        lines = [f"model_params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        known = ", ".join(LGBMParams.model_fields)
        raise ConfigError("lgbm: invalid model_params\n  " + "\n  ".join(lines) + f"\n  known: {known}") from None


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
    prev = ff.resp["prev_answer"]  # UNK: first answer, FIRST / FIRST+1: wrong / right, FIRST+2: unlabelled
    base = pd.DataFrame(
        {
            "tag": ff.cat["tag"],
            "head": ff.cat["head"],
            "tail": ff.cat["tail"],
            "elapsed_bucket": ff.cat["elapsed"],
            "prev_answer": np.where((prev == 2) | (prev == 3), prev - 2, np.nan),
            **{name: ff.cont[:, i] for i, name in enumerate(CONTINUOUS)},
        }
    )
    return Rows(ff.row_index, ff.answer, group, new_user, raw, base)


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


# ---------------------------------------------------------------- training


class _StderrLog:
    """Validation AUC every ``every`` rounds on stderr: stdout carries train.py's one JSON line."""

    def __init__(self, every: int):
        self.every = every
        self.history: list[dict[str, float]] = []
        self.order = 20  # LightGBM runs callbacks by this; before early stopping (30) so the last round is logged

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        it = env.iteration + 1
        for _, name, value, _ in env.evaluation_result_list:
            if name == "auc":
                self.history.append({"iteration": it, "valid_auc": float(value)})
                if self.every and (it % self.every == 0 or it == 1):
                    print(f"lgbm round {it}: valid auc {value:.4f}", file=sys.stderr)


def _labelled(features: pd.DataFrame, rows: Rows) -> tuple[pd.DataFrame, np.ndarray]:
    keep = rows.answer >= 0
    return features[keep].reset_index(drop=True), rows.answer[keep].astype(np.float64)


def train_lgbm(
    config: ExperimentConfig,
    encoder: FeatureEncoder,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    out_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Fit on ``train_df`` with early stopping on ``valid_df`` AUC; writes ``model.lgb`` and the statistics."""
    params = parse_params(config.model_params)
    started = time.perf_counter()
    train_rows = sort_rows(encoder, train_df)
    valid_rows = sort_rows(encoder, valid_df)
    stats = TargetStats.fit(train_rows.raw, train_rows.answer)
    x_train, y_train = _labelled(
        causal_features(train_rows, out_of_fold_stats(train_rows, params.n_folds, params.prior_weight, seed)),
        train_rows,
    )
    x_valid, y_valid = _labelled(
        causal_features(valid_rows, serving_stats(valid_rows, stats, params.prior_weight)), valid_rows
    )
    if len(np.unique(y_train)) < 2:
        raise ValueError("lgbm: training data needs both correct and wrong answers")
    booster_params = {
        "objective": "binary",
        "metric": "auc",
        "num_leaves": params.num_leaves,
        "learning_rate": params.learning_rate,
        "min_child_samples": params.min_child_samples,
        "bagging_fraction": params.subsample,
        "bagging_freq": 1 if params.subsample < 1 else 0,
        "feature_fraction": params.colsample_bytree,
        "lambda_l2": params.reg_lambda,
        "max_bin": params.max_bin,
        "num_threads": params.n_jobs,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    cats = [c for c in CATEGORICAL_FEATURES if c in x_train.columns]
    dtrain = lgb.Dataset(x_train, y_train, categorical_feature=cats, free_raw_data=False)
    log = _StderrLog(params.log_every)
    callbacks: list[Any] = [log]
    valid_sets = []
    can_validate = len(np.unique(y_valid)) == 2
    if can_validate:
        valid_sets = [lgb.Dataset(x_valid, y_valid, reference=dtrain, categorical_feature=cats)]
        callbacks.append(lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False))
    booster = lgb.train(
        booster_params,
        dtrain,
        num_boost_round=params.n_estimators,
        valid_sets=valid_sets,
        valid_names=["valid"] if can_validate else None,
        callbacks=callbacks,
    )
    best = booster.best_iteration if can_validate and booster.best_iteration > 0 else booster.current_iteration()
    # After early stopping the booster is cut back to its best round; the log knows how far training went.
    rounds = max([h["iteration"] for h in log.history], default=booster.current_iteration())
    tmp = out_dir / (MODEL_FILE + ".tmp")
    booster.save_model(str(tmp), num_iteration=best)
    tmp.replace(out_dir / MODEL_FILE)
    write_json(
        out_dir / STATS_FILE,
        {"stats": stats.to_dict(), "prior_weight": params.prior_weight, "features": list(x_train.columns)},
    )
    train_seconds = time.perf_counter() - started
    valid_auc = auc(y_valid, booster.predict(x_valid, num_iteration=best)) if can_validate else float("nan")
    n_leaves = sum(t["num_leaves"] for t in booster.dump_model(num_iteration=best)["tree_info"])
    return {
        "kind": "lgbm",
        "n_params": int(n_leaves),
        "train_seconds": train_seconds,
        "best_epoch": int(best),
        "epochs_run": int(rounds),
        "seconds_per_epoch": train_seconds / max(1, rounds),
        "valid_auc": valid_auc,
        "history": log.history,
    }


# ---------------------------------------------------------------- serving


class LGBMPredictor(Predictor):
    def __init__(self, bundle_dir: Path, meta: dict[str, Any]):
        super().__init__(bundle_dir, meta)
        self.encoder = FeatureEncoder.from_dict(json.loads((bundle_dir / "encoder.json").read_text()))
        saved = json.loads((bundle_dir / STATS_FILE).read_text())
        self.stats = TargetStats.from_dict(saved["stats"])
        self.prior_weight = float(saved["prior_weight"])
        self.features: list[str] = saved["features"]
        self.booster = lgb.Booster(model_file=str(bundle_dir / MODEL_FILE))

    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        out = np.full(len(df), np.nan)
        if len(df) == 0:
            return out
        rows = sort_rows(self.encoder, df)
        x = causal_features(rows, serving_stats(rows, self.stats, self.prior_weight))[self.features]
        if last_only:  # features need the whole history, but only the final row per user is scored
            last = np.append(rows.new_user[1:], True)
            out[rows.order[last]] = self.booster.predict(x[last])
        else:
            out[rows.order] = self.booster.predict(x)
        return out

    def predict_candidates(
        self, history: pd.DataFrame, candidates: pd.DataFrame, at: pd.Timestamp | None = None
    ) -> np.ndarray:
        return self.predict_candidates_batch([(history, candidates, at)])[0]

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Each job's full history encoded once with all its candidates after it (see ``encode_candidates``).

        Every feature here counts labelled answers only, or describes the previous row (which
        ``encode_candidates`` makes the last history row for every candidate), so a candidate gets the
        features it would have as the one answerCode -1 row after the history: the generic path's,
        without repeating the history per candidate.
        """
        results = [np.zeros(0) for _ in jobs]
        enc = encode_candidates(self.encoder, jobs)
        if enc is None:
            return results
        rows = rows_from_frame(enc.ff, enc.table)
        x = causal_features(rows, serving_stats(rows, self.stats, self.prior_weight))[self.features]
        picks = [enc.candidate_rows(u) for u in range(len(enc.jobs))]
        prob = self.booster.predict(x.iloc[np.concatenate(picks)])
        bounds = np.cumsum([0, *(len(p) for p in picks)])
        for u, (j, _, _) in enumerate(enc.jobs):
            results[j] = prob[bounds[u] : bounds[u + 1]]
        return results
