"""Drift of a new data version against the data the production model trained on (docs/monitoring.md#drift).

The population stability index of one feature, over bins fixed by the reference::

    PSI = sum over bins of (new_share - ref_share) * ln(new_share / ref_share)

with each share floored at ``FLOOR`` so an empty bin (a category the reference never saw, a
range the new answers never reach) counts as a large, finite shift instead of infinity.
Binning, so that the figure means the same on every version:

- numeric features (response time, history length): ``NUMERIC_BINS`` quantile bins of the
  reference (edges at its 10th, 20th, ... percentile; equal edges merged, so a discrete
  feature gets fewer bins); a value on an edge goes to the upper bin; missing values are left out;
- categorical mixes (answer code, item, KnowledgeTag): one bin per reference category when there
  are at most ``MAX_CATEGORY_BINS``; otherwise the categories, most answered first, are pooled
  into that many groups of about equal reference share (so a sample of a few hundred answers over
  hundreds of items does not read as drift by noise alone); categories the reference never saw
  share one more bin, ``(unseen)``.

Features, per answer: ``answer_rate`` (answerCode 0/1), ``item_mix`` (assessmentItemID),
``tag_mix`` (KnowledgeTag), ``response_time_s`` (seconds since the student's previous item was
shown, capped at 600 s: the model's own elapsed feature, dkt/data/features.py) and
``history_length`` (the student's earlier answers in the data version).

The reference is the production model's training set (``train.csv`` of the data version its
manifest names); the new answers are the rows of the new version that are not in the reference
version, their features computed on the student's whole history in the new version. Production's
AUC on them comes from its bundle through the serving loader (``dkt.predictor.load_predictor``).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dkt.bundle import utc_now
from dkt.data.features import ELAPSED_CAP_S
from dkt.data.io import read_csv
from dkt.settings import PipelineSettings, load
from pipeline.dataset import KEY
from pipeline.store import VersionedStore, VersionError, check_version_name

REPORT = "drift.json"  # stored beside the data version's files: datasets/<version>/drift.json
FLOOR = 1e-4
NUMERIC_BINS = 10
MAX_CATEGORY_BINS = 20
UNSEEN = "(unseen)"
CATEGORICAL = {"answer_rate": "answerCode", "item_mix": "assessmentItemID", "tag_mix": "KnowledgeTag"}
NUMERIC = ("response_time_s", "history_length")
FEATURES = (*CATEGORICAL, *NUMERIC)


def psi_from_counts(ref: np.ndarray, new: np.ndarray) -> float:
    """PSI of two count vectors over the same bins; NaN when either side is empty."""
    ref = np.asarray(ref, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    if ref.sum() == 0 or new.sum() == 0:
        return math.nan
    p = np.maximum(ref / ref.sum(), FLOOR)
    q = np.maximum(new / new.sum(), FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def numeric_psi(ref: np.ndarray, new: np.ndarray, bins: int = NUMERIC_BINS) -> float:
    """PSI over quantile bins of the reference (missing values left out)."""
    ref = np.asarray(ref, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    ref, new = ref[~np.isnan(ref)], new[~np.isnan(new)]
    if len(ref) == 0 or len(new) == 0:
        return math.nan
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    n_bins = len(edges) + 1
    count = lambda x: np.bincount(np.searchsorted(edges, x, side="right"), minlength=n_bins)  # noqa: E731
    return psi_from_counts(count(ref), count(new))


def category_groups(ref: pd.Series, max_bins: int = MAX_CATEGORY_BINS) -> dict[str, int]:
    """Each reference category's bin: its own, or (more than ``max_bins`` categories) one of ``max_bins``
    groups of about equal reference share, most answered categories first (ties by name: deterministic)."""
    counts = ref.astype(str).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    if len(counts) <= max_bins:
        return {c: i for i, c in enumerate(counts.index)}
    share_before = (counts.cumsum() - counts).to_numpy() / counts.sum()
    group = np.minimum((share_before * max_bins).astype(int), max_bins - 1)
    return dict(zip(counts.index, group.tolist(), strict=True))


def categorical_psi(ref: pd.Series, new: pd.Series, max_bins: int = MAX_CATEGORY_BINS) -> float:
    """PSI of a categorical mix: the reference's categories (grouped when many) plus one ``(unseen)`` bin."""
    if len(ref) == 0 or len(new) == 0:
        return math.nan
    groups = category_groups(ref, max_bins)
    unseen = max(groups.values(), default=-1) + 1

    def count(s: pd.Series) -> np.ndarray:
        idx = s.astype(str).map(groups).fillna(unseen).to_numpy(dtype=np.int64)
        return np.bincount(idx, minlength=unseen + 1)

    return psi_from_counts(count(ref), count(new))


def answer_features(df: pd.DataFrame) -> pd.DataFrame:
    """Per answer (input order): the columns the PSI is computed on, response time and history length added.

    Rows are ordered per student by time (file order among equal times), as the models read them."""
    n = len(df)
    order = np.lexsort((np.arange(n), df["Timestamp"].to_numpy(), df["userID"].to_numpy()))
    user = df["userID"].to_numpy()[order]
    ts = df["Timestamp"].to_numpy().astype("datetime64[ns]").astype(np.int64)[order] / 1e9
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    elapsed = np.full(n, np.nan)
    elapsed[1:] = np.clip(ts[1:] - ts[:-1], 0.0, ELAPSED_CAP_S)
    elapsed[first] = np.nan
    history = np.empty(n, dtype=np.int64)
    rt = np.empty(n)
    history[order] = np.arange(n) - start
    rt[order] = elapsed
    out = df[list(CATEGORICAL.values())].reset_index(drop=True).copy()
    out["response_time_s"] = rt
    out["history_length"] = history
    return out


def feature_psi(ref: pd.DataFrame, new: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """PSI and a readable summary (the reference's and the new answers' own figure) of each feature."""
    out: dict[str, dict[str, Any]] = {}
    for name, col in CATEGORICAL.items():
        bins = 2 if name == "answer_rate" else MAX_CATEGORY_BINS
        doc: dict[str, Any] = {"psi": _finite(categorical_psi(ref[col], new[col], bins))}
        if name == "answer_rate":
            doc |= {"reference": _mean(ref[col]), "new": _mean(new[col])}
        else:
            doc |= {"reference_categories": int(ref[col].nunique()), "new_categories": int(new[col].nunique()),
                    "new_unseen_share": _mean(~new[col].astype(str).isin(set(ref[col].astype(str))))}  # fmt: skip
        out[name] = doc
    for name in NUMERIC:
        out[name] = {
            "psi": _finite(numeric_psi(ref[name].to_numpy(), new[name].to_numpy())),
            "reference_median": _median(ref[name]),
            "new_median": _median(new[name]),
        }
    return out


def decide(
    features: dict[str, dict[str, Any]], n_new: int, threshold: float, min_answers: int, has_production: bool
) -> tuple[bool, str]:
    """Whether this drift calls for retraining, and why (the sentence the task log and the report carry)."""
    if not has_production:
        return True, "no production model yet: train one on this data"
    if n_new < min_answers:
        return False, f"{n_new} new answer(s), fewer than DKT_DRIFT_MIN_ANSWERS={min_answers}: too few to judge"
    worst = max(((d["psi"], f) for f, d in features.items() if d["psi"] is not None), default=None)
    if worst is None:
        return False, "no feature has a PSI (nothing comparable)"
    if worst[0] >= threshold:
        return True, f"{worst[1]} PSI {worst[0]:.4f} >= DKT_DRIFT_PSI_THRESHOLD={threshold}"
    return False, f"max PSI {worst[0]:.4f} ({worst[1]}) < DKT_DRIFT_PSI_THRESHOLD={threshold}"


def compare(
    reference: pd.DataFrame,
    new: pd.DataFrame,
    threshold: float,
    min_answers: int,
    has_production: bool = True,
) -> dict[str, Any]:
    """The drift part of the report from two ``answer_features`` tables: per-feature PSI, the max, the decision."""
    features = feature_psi(reference, new)
    psis = {f: d["psi"] for f, d in features.items() if d["psi"] is not None}
    retrain, reason = decide(features, len(new), threshold, min_answers, has_production)
    return {
        "reference_answers": len(reference),
        "new_answers": len(new),
        "features": features,
        "max_psi": max(psis.values()) if psis else None,
        "max_feature": max(psis, key=lambda f: psis[f]) if psis else None,
        "threshold": threshold,
        "min_answers": min_answers,
        "retrain": retrain,
        "reason": reason,
    }


def production_auc(bundle: Path, history: pd.DataFrame, is_new: np.ndarray) -> dict[str, Any]:
    """Production's metrics on the new answers: every row of ``history`` (the students' whole histories) is
    scored causally by the serving loader, and only the rows marked ``is_new`` are evaluated."""
    from dkt.metrics import evaluate_predictions
    from dkt.predictor import load_predictor

    prob = load_predictor(bundle, device="cpu").predict_rows(history)
    return evaluate_predictions(history[is_new].reset_index(drop=True), prob[is_new])


def new_answers(reference_all: pd.DataFrame, current: pd.DataFrame) -> np.ndarray:
    """A mask over ``current``: the rows whose (user, item, time) is not in the reference version."""
    return ~pd.MultiIndex.from_frame(current[KEY]).isin(pd.MultiIndex.from_frame(reference_all[KEY]))


def report_key(version: str) -> str:
    return f"datasets/{check_version_name(version)}/{REPORT}"


def store_report(store: VersionedStore, report: dict[str, Any]) -> str:
    """Write the report beside its data version's files (not in the manifest: the version stays as pushed)."""
    key = report_key(report["data_version"])
    store.blobs.put_bytes(key, json.dumps(report, indent=2).encode())
    return key


def read_report(store: VersionedStore, version: str) -> dict[str, Any] | None:
    """The stored drift report of a data version (for the operator page), or None when it has none."""
    got = store.blobs.get_bytes(report_key(version))
    return json.loads(got) if got is not None else None


def drift_report(
    store: VersionedStore, version: str = "latest", reference: str | None = None, work: Path | None = None
) -> dict[str, Any]:
    """The drift report of a stored data version against production's training data (or ``reference``)."""
    settings = load(PipelineSettings)
    with tempfile.TemporaryDirectory(prefix="dkt-drift-", dir=work) as tmp:
        root = Path(tmp)
        current = store.pull("datasets", version, root / "new")["version"]
        prod = store.pointed("models", "production")
        prod_manifest = store.manifest("models", prod) if prod else {}
        ref_version = reference or prod_manifest.get("data_version")
        source = "--reference" if reference else "production's training data"
        if ref_version and not reference and not _stored(store, str(ref_version)):
            source = f"the parent version (production's training data {ref_version} is not in the store)"
            ref_version = store.manifest("datasets", current).get("parent")
        if not ref_version:
            ref_version = store.manifest("datasets", current).get("parent")
            source = "the parent version (production names no training data)" if prod else "the parent version"
        report: dict[str, Any] = {
            "data_version": current,
            "reference_version": ref_version,
            "reference": source,
            "production_version": prod,
            "production_test_auc": prod_manifest.get("metrics", {}).get("test_auc"),
            "created_at": utc_now(),
        }
        everything = read_csv(root / "new" / "interactions.csv")
        features = answer_features(everything)
        if ref_version:
            store.pull("datasets", str(ref_version), root / "ref")
            is_new = new_answers(read_csv(root / "ref" / "interactions.csv"), everything)
            ref_rows = answer_features(read_csv(root / "ref" / "train.csv"))
        else:  # nothing to compare with: every answer is new, and no PSI is defined
            is_new = np.ones(len(everything), dtype=bool)
            ref_rows = features.iloc[0:0]
        limits = {"threshold": settings.drift_psi_threshold, "min_answers": settings.drift_min_answers}
        report |= compare(ref_rows, features[is_new].reset_index(drop=True), **limits, has_production=bool(prod))
        report["production_auc"] = None
        if prod and ref_version and is_new.any():  # no reference: the "new" answers may be its training data
            store.pull("models", prod, root / "model")
            users = everything["userID"].isin(set(everything.loc[is_new, "userID"])).to_numpy()
            history = everything[users].reset_index(drop=True)
            report["production_auc"] = production_auc(root / "model", history, is_new[users])
        return report


def _stored(store: VersionedStore, version: str) -> bool:
    """Whether a data version of this name is stored (a bundle trained on a file names a fingerprint, not one)."""
    try:
        return store.exists("datasets", version)
    except VersionError:
        return False


def table(report: dict[str, Any]) -> str:
    """The report as the lines an operator reads in a terminal or the Airflow task log."""
    lines = [
        f"data version {report['data_version']} against {report['reference_version']} ({report['reference']});"
        f" production {report['production_version']}",
        f"new answers {report['new_answers']}, reference answers {report['reference_answers']}",
        f"{'feature':<16}  {'psi':>8}  reference -> new",
    ]
    for name, d in report["features"].items():
        psi = "-" if d["psi"] is None else f"{d['psi']:.4f}"
        if "reference" in d:
            what = f"{_fmt(d['reference'])} -> {_fmt(d['new'])} (share correct)"
        elif "reference_median" in d:
            what = f"median {_fmt(d['reference_median'])} -> {_fmt(d['new_median'])}"
        else:
            what = (f"{d['reference_categories']} -> {d['new_categories']} categories,"
                    f" {_fmt(d['new_unseen_share'])} of new answers unseen")  # fmt: skip
        lines.append(f"{name:<16}  {psi:>8}  {what}")
    auc = report.get("production_auc") or {}
    lines.append(f"max PSI {_fmt(report['max_psi'])} ({report['max_feature']}), threshold {report['threshold']}")
    if auc:
        got = _fmt(auc.get("auc")) if auc.get("auc") is not None else f"undefined ({auc.get('auc_reason')})"
        lines.append(f"production AUC on the new answers {got} (n={auc.get('n')});"
                     f" its offline test AUC {_fmt(report['production_test_auc'])}")  # fmt: skip
    lines.append(f"retrain: {'yes' if report['retrain'] else 'no'} ({report['reason']})")
    return "\n".join(lines)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _mean(s: pd.Series) -> float | None:
    return float(s.mean()) if len(s) else None


def _median(s: pd.Series) -> float | None:
    s = s.dropna()
    return float(s.median()) if len(s) else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
