"""The steps of ``retrain_and_push_dag``: pull data -> train -> evaluate -> push -> promote.

Training goes through ``train.py`` (one entry point for people and the DAG).
The candidate and the production model are scored on the same held-out users
(the data set's ``test.csv``) with the serving loader, and the candidate is
promoted only if its AUC is at most ``DKT_PROMOTE_TOLERANCE`` below production's,
and only if the stored version loads and scores a smoke batch (``dkt.verify``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dkt.bundle import BundleError, default_version, lineage, read_meta, write_json
from dkt.settings import TrainingSettings, load
from pipeline.data_update import read_json
from pipeline.settings import REPO_ROOT
from pipeline.store import VersionedStore, VersionError, manifest_matches

METRIC = "auc"


class NotPromoted(Exception):
    """The candidate is worse than production by more than the tolerance."""


def pull_data(work: Path, store: VersionedStore) -> dict[str, Any]:
    m = store.pull("datasets", "latest", work / "data")
    return {"data_version": m["version"], "rows": m.get("rows", {})}


def train(
    work: Path, config: Path | None = None, epochs: int | None = None, device: str | None = None
) -> dict[str, Any]:
    """Train a candidate bundle into ``work/candidate`` with train.py (same flags a person would use)."""
    data_manifest = read_json(work / "data" / "manifest.json")
    settings = load(TrainingSettings)
    config = config or settings.config
    epochs = epochs or settings.epochs
    version = default_version()
    out = work / "candidate"
    argv = [
        sys.executable, str(REPO_ROOT / "train.py"),
        "--config", str(config),
        "--train-file", str(work / "data" / "train.csv"),
        "--test-file", str(work / "data" / "test.csv"),
        "--output-dir", str(out),
        "--model-version", version,
        "--data-version", data_manifest["version"],
        "--device", device or settings.device,
        "--no-progress",
    ]  # fmt: skip
    if epochs:
        argv += ["--epochs", str(epochs)]
    print("train: " + " ".join(argv), file=sys.stderr)
    # Training logs go straight to the task log; only the last stdout line (metrics JSON) is kept.
    proc = subprocess.run(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed with exit {proc.returncode}")
    return {
        "model_version": read_meta(out)["model_version"],
        "metrics": json.loads(proc.stdout.strip().splitlines()[-1]),
    }


def verify_stored(store: VersionedStore, version: str) -> dict[str, Any]:
    """Pull a stored model version into a scratch folder and check that it loads and scores a smoke batch.

    What is checked is what production would point at: the stored files, not a local copy of them.
    Raises ``BundleError`` naming the version when it does not.
    """
    from dkt.verify import verify_bundle  # torch and the models: only when a model is checked

    with tempfile.TemporaryDirectory(prefix=f"dkt-verify-{version}-") as tmp:
        store.pull("models", version, Path(tmp))
        try:
            return verify_bundle(tmp)
        except BundleError as exc:
            raise BundleError(f"model version {version} cannot be served: {exc}") from None


def score_bundle(bundle: Path, test_file: Path) -> dict[str, Any]:
    """Metrics of a bundle on a test file, through the serving loader."""
    from dkt.data.io import read_csv
    from dkt.metrics import evaluate_predictions
    from dkt.predictor import load_predictor

    test = read_csv(test_file)
    predictor = load_predictor(bundle, device="cpu")
    return evaluate_predictions(test, predictor.predict_rows(test))


def evaluate(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Score the candidate and the current production model on the same held-out users."""
    from dkt.verify import verify_bundle

    test_file = work / "data" / "test.csv"
    verify_bundle(work / "candidate")  # an unloadable candidate stops here, before it is stored
    doc: dict[str, Any] = {
        "candidate_version": read_meta(work / "candidate")["model_version"],
        "candidate": score_bundle(work / "candidate", test_file),
    }
    prod = store.pointed("models", "production")
    doc["production_version"] = prod
    if prod:
        store.pull("models", prod, work / "production")
        doc["production"] = score_bundle(work / "production", test_file)
    write_json(work / "evaluation.json", doc)
    return doc


def push_model(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Store the candidate as a new model version (moves ``latest`` only; promotion is separate)."""
    meta = read_meta(work / "candidate")
    version = meta["model_version"]
    if store.exists("models", version):  # a retry after a crash past the upload, if the files are ours
        manifest = store.manifest("models", version)
        if not manifest_matches(manifest, work / "candidate"):
            raise VersionError(f"model version {version} is already stored with other files; retrain for a new version")
        store.set_pointer("models", "latest", version, reason="push (retry)")
        return manifest
    ev = read_json(work / "evaluation.json")
    res = store.push(
        "models",
        work / "candidate",
        version,
        parent=store.pointed("models", "production"),
        metrics=meta.get("metrics", {}),
        extra={"model": meta["model"], **lineage(meta), "evaluation": ev},
    )
    return res.manifest


def _metric(doc: dict[str, Any]) -> float:
    """The decision metric, NaN when undefined (``None`` in JSON since metrics carry a reason instead of NaN)."""
    v = doc.get(METRIC)
    return float(v) if isinstance(v, int | float) else math.nan


def decide(candidate: dict[str, Any], production: dict[str, Any] | None, tolerance: float) -> tuple[bool, str]:
    c = _metric(candidate)
    if math.isnan(c):
        why = candidate.get(f"{METRIC}_reason")
        return False, f"candidate {METRIC} is undefined" + (f" ({why})" if why else "")
    if not production:
        return True, f"no production model yet; candidate {METRIC} {c:.4f}"
    p = _metric(production)
    if math.isnan(p) or c >= p - tolerance:
        return True, f"candidate {METRIC} {c:.4f} vs production {p:.4f} (tolerance {tolerance})"
    return False, f"candidate {METRIC} {c:.4f} is worse than production {p:.4f} by more than {tolerance}"


def load_evaluation(work: Path, store: VersionedStore) -> dict[str, Any]:
    """The evaluate step's result: from the work folder, or, when the train tasks ran on another host
    (the Edge worker, DKT_TRAIN_EXECUTOR=edge), from the manifest push_candidate stored it in."""
    local = work / "evaluation.json"
    if local.is_file():
        return read_json(local)
    latest = store.pointed("models", "latest")
    manifest = store.manifest("models", latest) if latest else {}
    ev = manifest.get("evaluation")
    if not isinstance(ev, dict) or ev.get("candidate_version") != latest:
        raise RuntimeError(
            f"no {local}, and the latest stored model ({latest}) carries no evaluation of itself: "
            "run evaluate and push-candidate for this run first"
        )
    return ev


def promote_if_better(work: Path, store: VersionedStore, tolerance: float | None = None) -> dict[str, Any]:
    ev = load_evaluation(work, store)
    tol = tolerance if tolerance is not None else load(TrainingSettings).promote_tolerance
    ok, why = decide(ev["candidate"], ev.get("production"), tol)
    if not ok:
        raise NotPromoted(why)
    current = store.pointed("models", "production")
    if current != ev["production_version"]:
        # Someone promoted meanwhile; the comparison no longer holds.
        raise NotPromoted(f"production moved from {ev['production_version']} to {current} during this run")
    verify_stored(store, ev["candidate_version"])  # BundleError: a model that does not load is never promoted
    doc = store.set_pointer("models", "production", ev["candidate_version"], reason=why)
    return {"promoted": ev["candidate_version"], "reason": why, "previous": current, "pointer": doc}
