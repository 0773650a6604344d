"""Evaluation: AUC and accuracy over every predicted answer and over each user's last one."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p >= 0.5) == (y == 1))) if len(y) else float("nan")


def evaluate_predictions(df: pd.DataFrame, prob: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Metrics of per-row probabilities ``prob`` (aligned with ``df``) on labelled rows.

    "last" is each user's last labelled answer in time order: the competition metric.
    """
    labelled = (df["answerCode"].to_numpy() >= 0) & ~np.isnan(prob)
    y = df["answerCode"].to_numpy()[labelled]
    p = prob[labelled]
    sub = df.loc[labelled, ["userID", "Timestamp"]].assign(_pos=np.arange(labelled.sum()))
    last = sub.sort_values(["userID", "Timestamp", "_pos"], kind="stable").groupby("userID")["_pos"].last().to_numpy()
    return {
        f"{prefix}auc": auc(y, p),
        f"{prefix}acc": accuracy(y, p),
        f"{prefix}auc_last": auc(y[last], p[last]),
        f"{prefix}acc_last": accuracy(y[last], p[last]),
        f"{prefix}n": len(y),
        f"{prefix}n_users": len(last),
    }
