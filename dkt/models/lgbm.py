"""LightGBM baseline: gradient-boosted trees on causal, engineered per-row features.

The features and the difficulty statistics are in ``dkt.models.lgbm_features``; this file trains the
booster, saves it (``model.lgb``, the statistics of the whole training set in ``lgbm_stats.json``) and
serves it. Its incremental form is the interface's reference one (the state is the answers): its
features look at the whole history.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from dkt.bundle import write_json
from dkt.config import ExperimentConfig, parse_model_params
from dkt.data.features import FeatureEncoder
from dkt.metrics import auc
from dkt.models.inputs import HISTORY_COLUMNS, Job, StudentFeatures, encode_candidates
from dkt.models.interface import ModelKind, Predictor, TrainJob, register
from dkt.models.lgbm_features import (
    STAT_KEYS,
    Rows,
    RunningCounts,
    TargetStats,
    base_features,
    causal_features,
    out_of_fold_stats,
    rows_from_frame,
    serving_stats,
    sort_rows,
)

MODEL_FILE = "model.lgb"
STATS_FILE = "lgbm_stats.json"
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
    return parse_model_params(LGBMParams, "lgbm", params)


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

    # ------------------------------------------------------------ incremental form: running counts

    def initial_state(self) -> LGBMState:
        return LGBMState()

    def step(self, state: LGBMState, answer: Mapping[str, Any]) -> LGBMState:
        row, features = state.features.after(self.encoder, answer)
        item = str(answer["assessmentItemID"])
        raw = {"item": item, "test": str(answer["testId"]), "tag": str(int(answer["KnowledgeTag"])), "paper": item[1:7]}
        p_item = float(self.stats.lookup("item", np.array([item], dtype=object), self.prior_weight)[0][0])
        return LGBMState(features=features, counts=state.counts.after(raw, int(row.answer[0]), p_item))

    def score(self, state: LGBMState, candidates: pd.DataFrame, at: pd.Timestamp | None = None) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        ff = state.features.encode(self.encoder, candidates, at)
        item = candidates["assessmentItemID"].astype(str).to_numpy()
        raw = {
            "item": item,
            "test": candidates["testId"].astype(str).to_numpy(),
            "tag": candidates["KnowledgeTag"].astype("int64").astype(str).to_numpy(),
            "paper": np.asarray([s[1:7] for s in item], dtype=object),
        }
        stats = {key: self.stats.lookup(key, raw[key], self.prior_weight) for key in STAT_KEYS}
        x = state.counts.features(base_features(ff), raw, stats)[self.features]
        return np.asarray(self.booster.predict(x))

    def state_of(self, history: pd.DataFrame) -> LGBMState:
        """The state after a history in one encoding and one pass over it (a cold student)."""
        if len(history) == 0:
            return self.initial_state()
        hist = history.sort_values("Timestamp", kind="stable").loc[:, list(HISTORY_COLUMNS)]
        table = hist.assign(userID="0")
        ff = self.encoder.transform(table)
        rows = rows_from_frame(ff, table)
        p_item = self.stats.lookup("item", rows.raw["item"], self.prior_weight)[0]
        return LGBMState(StudentFeatures.of(ff, hist), RunningCounts.of(rows.raw, rows.answer, p_item))


@dataclass(frozen=True)
class LGBMState:
    """The encoder's running features and the counts LightGBM's own features read (``RunningCounts``)."""

    features: StudentFeatures = field(default_factory=StudentFeatures)
    counts: RunningCounts = field(default_factory=RunningCounts)


@register
class LGBMKind(ModelKind):
    name = "lgbm"
    bundle_kind = "lgbm"

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        parse_params(params)

    @classmethod
    def train(cls, job: TrainJob) -> dict[str, Any]:
        return train_lgbm(job.config, job.encoder, job.data.train, job.data.valid, job.out_dir, job.seed)

    @classmethod
    def load(cls, bundle_dir: Path, meta: dict[str, Any], device: str = "cpu") -> LGBMPredictor:
        return LGBMPredictor(bundle_dir, meta)
