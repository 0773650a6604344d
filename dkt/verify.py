"""Is this bundle servable? Load it the way serving does and score a smoke batch.

One check for every gate: ``train.py`` runs it before it writes ``bundle.json``; ``dkt models
push --promote``, ``dkt models promote`` and the retrain DAG's promote step run it before
production may point at a model. A bundle that fails it is never promoted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dkt.bundle import BundleError, read_meta, refuse_nan
from dkt.predictor import load_predictor  # light: a kind's own imports (torch, lightgbm) come when it loads

SMOKE_ITEMS = 8
SMOKE_START = pd.Timestamp("2020-01-01 09:00:00")
SMOKE_STEP = pd.Timedelta(seconds=40)


def smoke_batch(catalog: dict[str, list[list[str]]], n_items: int = SMOKE_ITEMS) -> pd.DataFrame:
    """Two students answering the bundle's own catalog items (known to the encoder), one right, one wrong,
    so both answer paths of the model run; the last row of each asks for a prediction (answerCode -1)."""
    items = [(int(tag), item, test) for tag, pairs in catalog.items() for item, test in pairs][:n_items]
    if not items:
        raise BundleError("catalog.json lists no items to score a smoke batch with")
    rows = []
    for u, first in (("smoke-a", 1), ("smoke-b", 0)):
        for i, (tag, item, test) in enumerate(items):
            answer = -1 if i == len(items) - 1 else (first + i) % 2
            rows.append((u, item, test, answer, SMOKE_START + SMOKE_STEP * i, tag))
    df = pd.DataFrame(rows, columns=["userID", "assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"])
    return df.astype({"answerCode": "int8", "KnowledgeTag": "int64"})


def _check_probabilities(p: np.ndarray, expected: int, what: str) -> None:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (expected,):
        raise ValueError(f"{what}: {p.shape[0] if p.ndim else 0} probabilities for {expected} rows")
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        raise ValueError(f"{what}: probability {p[bad][0]!r} is not a finite number in [0, 1]")


def verify_bundle(bundle_dir: str | Path, device: str = "cpu", meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``bundle_dir`` with the serving loader and score a smoke batch; raise ``BundleError`` if it cannot.

    ``meta`` stands in for ``bundle.json`` (train.py checks before writing it). Returns a short summary.
    """
    bundle_dir = Path(bundle_dir)
    if meta is None:
        meta = read_meta(bundle_dir)  # refuses a missing bundle.json and NaN / Infinity in it
    metrics_file = bundle_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            json.loads(metrics_file.read_text(), parse_constant=refuse_nan)
        except ValueError as exc:
            raise BundleError(f"{metrics_file}: {exc}") from None
    try:
        predictor = load_predictor(bundle_dir, device=device, meta=meta)
    except BundleError:
        raise
    except Exception as exc:  # any failure to load (corrupt weights, bad config, missing file) means "unloadable"
        raise BundleError(f"{bundle_dir}: the model does not load: {_one_line(exc)}") from None
    try:
        batch = smoke_batch(predictor.catalog)
        rows = predictor.predict_rows(batch)
        _check_probabilities(rows, len(batch), "predict_rows")
        history = batch[(batch["userID"] == "smoke-a") & (batch["answerCode"] >= 0)]
        candidates = batch.loc[batch["answerCode"] < 0, ["assessmentItemID", "testId", "KnowledgeTag"]]
        at = history["Timestamp"].max() + SMOKE_STEP
        cand = predictor.predict_candidates(history, candidates.reset_index(drop=True), at)
        _check_probabilities(cand, len(candidates), "predict_candidates")
    except BundleError as exc:
        raise BundleError(f"{bundle_dir}: {exc}") from None
    except Exception as exc:  # same reasoning: a model that cannot score must not be served
        raise BundleError(f"{bundle_dir}: the model does not score a smoke batch: {_one_line(exc)}") from None
    return {"smoke_rows": len(batch), "p_min": float(np.min(rows)), "p_max": float(np.max(rows))}


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: errors are one line (torch's unpickling errors run to a dozen)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
