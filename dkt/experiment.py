"""One training run, end to end: load, split, fit, evaluate, write the bundle.

``train.py`` is a thin command line over ``run``; the DAGs call ``train.py``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dkt.bundle import BUNDLE_FILE, BUNDLE_FORMAT, code_version, default_version, item_catalog, utc_now, write_json
from dkt.config import ExperimentConfig, load_config
from dkt.data.features import FeatureEncoder
from dkt.data.io import DataFormat, fingerprint, load_interactions
from dkt.metrics import evaluate_predictions
from dkt.models import build_torch_model
from dkt.predictor import load_predictor
from dkt.training import count_params, fit_sequence_model, resolve_device, seed_everything


@dataclass
class RunData:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    fingerprints: dict[str, str]


def split_by_user(df: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a share of users: no user is in both parts."""
    users = np.sort(df["userID"].unique())
    if len(users) < 2:
        raise ValueError("need at least 2 users to split training data into train and validation")
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
    full = load_interactions(train_file, fmt)
    if valid_file:
        train, valid = full, load_interactions(valid_file, fmt)
    else:
        train, valid = split_by_user(full, valid_ratio, seed)
    test = load_interactions(test_file, fmt)
    fps = {"train_file": fingerprint(full), "test": fingerprint(test)}
    if valid_file:
        fps["valid_file"] = fingerprint(valid)
    return RunData(train, valid, test, fps)


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
) -> dict[str, Any]:
    """Train one model and write its bundle to ``output_dir``; returns the metrics."""
    if not isinstance(config, ExperimentConfig):
        config_dir = Path(config).parent
        config = load_config(config)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BUNDLE_FILE).unlink(missing_ok=True)  # the folder is incomplete until the end of this run
    seed_everything(seed)
    dev = resolve_device(device)
    encoder = FeatureEncoder.fit(data.train)
    write_json(out / "config.json", config.model_dump(mode="json"))
    write_json(out / "encoder.json", encoder.to_dict())
    write_json(out / "catalog.json", item_catalog(data.train[data.train["answerCode"] >= 0]))

    print(
        f"training {config.model} on {len(data.train):,} rows / {data.train['userID'].nunique():,} users "
        f"(valid {data.valid['userID'].nunique():,} users) on {dev}",
        file=sys.stderr,
    )
    if config.model == "ensemble":
        from dkt.models.ensemble import train_ensemble

        fit = train_ensemble(config, data, out, epochs, device, seed, config_dir or Path("config"), progress)
    elif config.model == "lgbm":
        from dkt.models.lgbm import train_lgbm

        fit = train_lgbm(config, encoder, data.train, data.valid, out, seed)
    else:
        model = build_torch_model(config.model, config.model_params, encoder.sizes())

        def save(m: torch.nn.Module, epoch: int, valid_auc: float) -> None:
            torch.save(m.state_dict(), out / "weights.pt.tmp")
            (out / "weights.pt.tmp").replace(out / "weights.pt")

        result = fit_sequence_model(
            model,
            encoder.transform(data.train),
            encoder.transform(data.valid),
            config.train,
            dev,
            seed,
            epochs,
            on_improve=save,
            progress=progress,
        )
        fit = {
            "kind": "sequence",
            "n_params": count_params(model),
            "train_seconds": result.train_seconds,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds_per_epoch": result.train_seconds / max(1, result.epochs_run),
            "valid_auc": result.best_valid_auc,
            "history": result.history,
        }

    meta = {
        "format": BUNDLE_FORMAT,
        "model": config.model,
        "kind": fit["kind"],
        "model_version": model_version or default_version(),
        "data_version": data_version or data.fingerprints["train_file"],
        "code_version": code_version(),
        "created_at": utc_now(),
        "data_fingerprint": data.fingerprints,
        "max_seq_len": config.train.max_seq_len,
        "n_params": fit["n_params"],
        "seed": seed,
    }
    # Evaluate through the same loader that serving uses: what is measured is what is served.
    write_json(out / BUNDLE_FILE, meta | {"metrics": {}})
    predictor = load_predictor(out, device=str(dev))
    test_metrics = evaluate_predictions(data.test, predictor.predict_rows(data.test), prefix="test_")
    metrics = {
        **test_metrics,
        "n_params": fit["n_params"],
        "train_seconds": round(fit["train_seconds"], 2),
        "seconds_per_epoch": round(fit.get("seconds_per_epoch", fit["train_seconds"]), 2),
        "best_epoch": fit.get("best_epoch", 0),
        "epochs_run": fit.get("epochs_run", 0),
        "valid_auc": fit.get("valid_auc", float("nan")),
        "device": str(dev),
        "model": config.model,
    }
    write_json(out / "metrics.json", metrics)
    if fit.get("history"):
        write_json(out / "history.json", fit["history"])
    write_json(out / BUNDLE_FILE, meta | {"metrics": metrics})
    return metrics


def summary_line(metrics: dict[str, Any]) -> str:
    keys = ("test_auc", "test_auc_last", "test_acc", "n_params", "train_seconds", "device")
    return json.dumps({k: metrics[k] for k in keys})
