"""Evaluation: AUC, accuracy and RMSE over every predicted answer; AUC and accuracy over each user's last one.

``auc`` and ``accuracy`` return NaN when undefined (for arithmetic inside training);
``evaluate_predictions`` turns that into ``None`` plus a ``<key>_reason``, so JSON never carries NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dkt import quality


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC, NaN with one class. dkt.quality's (checked against sklearn's roc_auc_score within 1e-9 in
    tests/dkt/test_quality.py), not sklearn's: importing sklearn.metrics cost every training, evaluation and
    serving process 2.3 CPU-s, more than training a test model (bench/import_bench.py)."""
    value = quality.auc(p, y) if len(y) else None
    return float("nan") if value is None else value


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p >= 0.5) == (y == 1))) if len(y) else float("nan")


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    """Root mean squared error of the probabilities (the KT benchmarks' third column, beside AUC and accuracy)."""
    return float(np.sqrt(np.mean((p - y) ** 2))) if len(y) else float("nan")


def why_undefined(y: np.ndarray, what: str) -> str:
    """Why a metric over labels ``y`` cannot be computed (for the ``<key>_reason`` field)."""
    if len(y) == 0:
        return f"no labelled answers in {what}"
    return f"only one class in {what} (all {'correct' if int(y[0]) == 1 else 'wrong'})"


def defined(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def put_metric(out: dict[str, Any], key: str, value: float | None, reason: str) -> None:
    """``out[key] = value``, or ``None`` with ``out[key + "_reason"]`` when the value is undefined."""
    if defined(value):
        out[key] = value
    else:
        out[key] = None
        out[f"{key}_reason"] = reason


def finite_or_none(obj: Any) -> Any:
    """A copy of a JSON-like object with every NaN / infinity replaced by ``None`` (for logs such as history)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def evaluate_predictions(df: pd.DataFrame, prob: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Metrics of per-row probabilities ``prob`` (aligned with ``df``) on labelled rows.

    "last" is each user's last labelled answer in time order: the competition metric. An undefined
    metric (one class: no AUC; no labelled rows: nothing at all) is ``None`` with ``<key>_reason``.
    """
    labelled = (df["answerCode"].to_numpy() >= 0) & ~np.isnan(prob)
    y = df["answerCode"].to_numpy()[labelled]
    p = prob[labelled]
    sub = df.loc[labelled, ["userID", "Timestamp"]].assign(_pos=np.arange(labelled.sum()))
    last = sub.sort_values(["userID", "Timestamp", "_pos"], kind="stable").groupby("userID")["_pos"].last().to_numpy()
    what = f"{prefix.rstrip('_') or 'evaluation'} labels"
    out: dict[str, Any] = {}
    put_metric(out, f"{prefix}auc", auc(y, p), why_undefined(y, what))
    put_metric(out, f"{prefix}acc", accuracy(y, p), why_undefined(y, what))
    put_metric(out, f"{prefix}rmse", rmse(y.astype(np.float64), p), why_undefined(y, what))
    put_metric(out, f"{prefix}auc_last", auc(y[last], p[last]), why_undefined(y[last], f"last answers of {what}"))
    put_metric(out, f"{prefix}acc_last", accuracy(y[last], p[last]), why_undefined(y[last], f"last answers of {what}"))
    out[f"{prefix}n"] = len(y)
    out[f"{prefix}n_users"] = len(last)
    return out
