"""One training run, end to end: load, split, fit, evaluate, write the bundle.

``train.py`` is a thin command line over ``run``; the DAGs call ``train.py``.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dkt import tracking
from dkt.bundle import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    BundleError,
    code_commit,
    code_version,
    config_hash,
    default_version,
    item_catalog,
    utc_now,
    write_json,
)
from dkt.config import ExperimentConfig, load_config
from dkt.data.features import FeatureEncoder
from dkt.data.io import DataFormat, RunFiles, fingerprint, load_run_files
from dkt.data.schema import DataValidationError
from dkt.metrics import evaluate_predictions, finite_or_none, put_metric
from dkt.models.interface import RunData, TrainJob, kind_class
from dkt.predictor import load_predictor
from dkt.training import resolve_device, seed_everything
from dkt.verify import verify_bundle

__all__ = ["RunData", "load_run_data", "run", "split_by_user", "split_run_files", "summary_line"]


def split_by_user(
    df: pd.DataFrame, ratio: float, seed: int, source: str = "<train>"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a share of users: no user is in both parts."""
    users = np.sort(df["userID"].unique())
    if len(users) < 2:
        raise DataValidationError(
            source,
            f"{len(users)} user ({users[0]!r}); holding out validation users needs at least 2 (or give --valid-file)",
        )
    rng = np.random.default_rng(seed)
    n_valid = min(len(users) - 1, max(1, round(len(users) * ratio)))
    valid_users = set(rng.choice(users, n_valid, replace=False))
    is_valid = df["userID"].isin(valid_users)
    return df[~is_valid].reset_index(drop=True), df[is_valid].reset_index(drop=True)


def load_run_data(
    train_file: str | Path,
    test_file: str | Path,
    valid_file: str | Path | None,
    fmt: DataFormat,
    valid_ratio: float,
    seed: int,
) -> RunData:
    """Load, check and split the run's data; every problem is a ``DataValidationError`` naming the file."""
    return split_run_files(load_run_files(train_file, test_file, valid_file, fmt), valid_ratio, seed)


def split_run_files(files: RunFiles, valid_ratio: float, seed: int) -> RunData:
    """Hold out validation users from the train file unless a valid file was given."""
    if files.valid is not None:
        train, valid = files.train, files.valid
    else:
        train, valid = split_by_user(files.train, valid_ratio, seed, files.sources["--train-file"])
    fps = {"train_file": fingerprint(files.train), "test": fingerprint(files.test)}
    if files.valid is not None:
        fps["valid_file"] = fingerprint(files.valid)
    return RunData(train, valid, files.test, fps)


def run(
    config: ExperimentConfig | str | Path,
    data: RunData,
    output_dir: str | Path,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 42,
    model_version: str | None = None,
    data_version: str | None = None,
    config_dir: Path | None = None,
    progress: bool = True,
    init_from: Path | None = None,
) -> dict[str, Any]:
    """Train one model and write its bundle to ``output_dir``; returns the metrics.

    ``init_from``: a bundle whose weights seed the model where its kind allows (warm start; the kind says in the
    log when it trains from scratch instead, ``SequenceKind.warm_start``).

    ``bundle.json`` is written last, and only after the saved model has loaded and scored a smoke
    batch (``dkt.verify``): a folder without it is incomplete and every loader refuses it.
    """
    if not isinstance(config, ExperimentConfig):
        config_dir = Path(config).parent
        config = load_config(config)
    # Recorded in MLflow when a tracking server is configured (dkt/tracking.py); never fails the training.
    params = tracking.flat_params(config.model_dump(mode="json"))
    params |= {"seed": str(seed), "device": device, "output_dir": str(output_dir)}
    if epochs is not None:  # --epochs over the config's train.epochs
        params["epochs"] = str(epochs)
    with tracking.training_run(config.model, params) as tracked:
        return _train(
            config, data, Path(output_dir), epochs, device, seed, model_version, data_version, config_dir, progress,
            tracked, init_from,
        )  # fmt: skip


def _train(
    config: ExperimentConfig,
    data: RunData,
    out: Path,
    epochs: int | None,
    device: str,
    seed: int,
    model_version: str | None,
    data_version: str | None,
    config_dir: Path | None,
    progress: bool,
    tracked: tracking.TrackedRun,
    init_from: Path | None = None,
) -> dict[str, Any]:
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: --output-dir exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / BUNDLE_FILE).unlink(missing_ok=True)  # the folder is incomplete until the end of this run
    seed_everything(seed)
    dev = resolve_device(device)
    encoder = FeatureEncoder.fit(data.train)
    config_doc = config.model_dump(mode="json")
    write_json(out / "config.json", config_doc)
    write_json(out / "encoder.json", encoder.to_dict())
    write_json(out / "catalog.json", item_catalog(data.train[data.train["answerCode"] >= 0]))

    print(
        f"training {config.model} on {len(data.train):,} rows / {data.train['userID'].nunique():,} users "
        f"(valid {data.valid['userID'].nunique():,} users) on {dev}",
        file=sys.stderr,
    )
    kind = kind_class(config.model)
    # An ensemble trains its members through this same function, with this run's settings.
    member = partial(run, data=data, epochs=epochs, device=device, seed=seed, progress=progress)
    job = TrainJob(
        config=config,
        encoder=encoder,
        data=data,
        out_dir=out,
        epochs=epochs,
        device=device,
        seed=seed,
        config_dir=config_dir or Path("config"),
        progress=progress,
        train_member=lambda path, out_dir, member_seed: member(path, output_dir=out_dir, seed=member_seed),
        init_from=init_from,
    )
    fit = kind.train(job)
    hashed_config = kind.hashed_config(config_doc, out)

    commit, dirty = code_commit()
    meta = {
        "format": BUNDLE_FORMAT,
        "model": config.model,
        "kind": kind.bundle_kind,
        "model_version": model_version or default_version(),
        # Lineage (dkt.bundle.LINEAGE_KEYS): what this model was made from, also copied into the store manifest.
        "data_version": data_version or data.fingerprints["train_file"],
        "code_commit": commit,
        "code_dirty": dirty,
        "code_version": code_version(commit, dirty),
        "config_hash": config_hash(hashed_config),
        "seed": seed,
        "created_at": utc_now(),
        "data_fingerprint": data.fingerprints,
        "max_seq_len": config.train.max_seq_len,
        "n_params": fit["n_params"],
    }
    # The smoke check first (cheap, and a model that cannot score a batch is not worth evaluating), then
    # evaluation through the same loader serving uses: what is measured is what is served.
    verify_bundle(out, device=str(dev), meta=meta)
    predictor = load_predictor(out, device=str(dev), meta=meta)
    metrics: dict[str, Any] = evaluate_predictions(data.test, predictor.predict_rows(data.test), prefix="test_")
    metrics |= {
        "n_params": fit["n_params"],
        "train_seconds": round(fit["train_seconds"], 2),
        "seconds_per_epoch": round(fit.get("seconds_per_epoch", fit["train_seconds"]), 2),
        "best_epoch": fit.get("best_epoch", 0),
        "epochs_run": fit.get("epochs_run", 0),
        "device": str(dev),
        "model": config.model,
    }
    put_metric(metrics, "valid_auc", fit.get("valid_auc"), fit.get("selection_reason") or valid_auc_reason(data))
    if fit.get("selection_reason"):
        metrics["selected_by"] = fit["selected_by"]
    write_json(out / "metrics.json", metrics)
    if fit.get("history"):
        write_json(out / "history.json", finite_or_none(fit["history"]))
    meta |= tracked.record(meta, metrics, fit.get("history") or [], out)
    write_json(out / BUNDLE_FILE, meta | {"metrics": metrics})  # last: from here on the folder is a bundle
    return metrics


def valid_auc_reason(data: RunData) -> str:
    y = data.valid["answerCode"].to_numpy()
    classes = np.unique(y[y >= 0])
    if len(classes) == 0:
        return "no labelled answers in validation"
    if len(classes) == 1:
        return f"only one class in validation labels (all {int(classes[0])})"
    return "not computed for this model kind"


def summary_line(metrics: dict[str, Any]) -> str:
    keys = ("test_auc", "test_auc_last", "test_acc", "n_params", "train_seconds", "device")
    reasons = {f"{k}_reason": metrics[f"{k}_reason"] for k in keys if f"{k}_reason" in metrics}
    return json.dumps({k: metrics[k] for k in keys} | reasons, allow_nan=False)
