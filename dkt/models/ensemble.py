"""Soft-voting ensemble: a weighted mean of the member models' P(correct).

Each member listed in ``config/ensemble.json`` is trained as a bundle of its own
under ``members/<nn>-<name>/`` (so it can be inspected, or served alone); the
ensemble's ``ensemble.json`` names the member folders and their normalised
weights. With ``model_params.fit_weights`` the weights are instead chosen to
minimise log loss on the validation users (the same users that early-stopped
the members, so the ensemble's ``valid_auc`` is then slightly optimistic).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.optimize import minimize

from dkt.bundle import BundleError, read_meta, write_json
from dkt.config import ConfigError, load_config
from dkt.metrics import auc
from dkt.models.inputs import EMPTY_HISTORY, Job, resolve_at
from dkt.models.interface import ModelKind, Predictor, TrainJob, register
from dkt.predictor import load_predictor
from dkt.training import resolve_device

MEMBERS_DIR = "members"
ENSEMBLE_FILE = "ensemble.json"
EPS = 1e-6


class EnsembleParams(BaseModel):
    """``model_params`` of an ensemble config."""

    model_config = ConfigDict(extra="forbid")

    fit_weights: bool = Field(False, description="fit member weights on validation log loss instead of the config's")


def parse_params(params: dict[str, Any]) -> EnsembleParams:
    try:
        return EnsembleParams.model_validate(params)
    except ValidationError as exc:
        lines = [f"model_params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        known = ", ".join(EnsembleParams.model_fields)
        raise ConfigError("ensemble: invalid model_params\n  " + "\n  ".join(lines) + f"\n  known: {known}") from None


def normalise(weights: list[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def weighted_mean(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Soft vote: sum of w_i * p_i with weights summing to 1 (NaN where any member has none)."""
    return np.sum([w * p for w, p in zip(weights, probs, strict=True)], axis=0)


def fit_weights(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Weights on the simplex (softmax of free parameters) minimising validation log loss."""
    if len(probs) == 1:
        return np.ones(1)
    p = np.clip(np.stack(probs), EPS, 1 - EPS)

    def loss(theta: np.ndarray) -> float:
        w = np.exp(theta - theta.max())
        q = np.clip((w / w.sum()) @ p, EPS, 1 - EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    res = minimize(loss, np.zeros(len(probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


def member_dir_name(i: int, model: str) -> str:
    return f"{i:02d}-{model}"


def train_ensemble(job: TrainJob) -> dict[str, Any]:
    """Train every member into ``out_dir/members/`` and write ``ensemble.json``; returns the fit summary.

    Members are trained by ``job.train_member``: the same entry point as any model (``dkt.experiment.run``).
    """
    config, data, out_dir = job.config, job.data, job.out_dir
    params = parse_params(config.model_params)
    # Read every member config first so a typo fails before hours of training.
    member_cfgs = []
    for i, m in enumerate(config.members):
        path = Path(m.config) if Path(m.config).is_absolute() else job.config_dir / m.config
        cfg = load_config(path)
        if cfg.model == "ensemble":
            raise ConfigError(f"{path}: members[{i}] is itself an ensemble; list its members here instead")
        member_cfgs.append((path, cfg))

    names, member_metrics = [], []
    for i, (path, cfg) in enumerate(member_cfgs):
        name = member_dir_name(i, cfg.model)
        print(f"ensemble member {i + 1}/{len(member_cfgs)}: {cfg.model} ({path})", file=sys.stderr, flush=True)
        metrics = job.train_member(path, out_dir / MEMBERS_DIR / name)
        names.append(name)
        member_metrics.append(metrics)

    valid_y = data.valid["answerCode"].to_numpy()
    labelled = valid_y >= 0
    dev = str(resolve_device(job.device))
    probs = [load_predictor(out_dir / MEMBERS_DIR / n, device=dev).predict_rows(data.valid) for n in names]
    if params.fit_weights and len(np.unique(valid_y[labelled])) == 2:
        weights = fit_weights([p[labelled] for p in probs], valid_y[labelled].astype(np.float64))
    else:  # as configured; also when validation has too few labels to fit anything on
        weights = normalise([m.weight for m in config.members])
    write_json(
        out_dir / ENSEMBLE_FILE,
        {"members": [{"dir": f"{MEMBERS_DIR}/{n}", "weight": float(w)} for n, w in zip(names, weights, strict=True)]},
    )
    ens = weighted_mean(probs, weights)
    train_seconds = float(sum(m["train_seconds"] for m in member_metrics))
    return {
        "n_params": int(sum(m["n_params"] for m in member_metrics)),
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds,
        "best_epoch": 0,
        "epochs_run": 0,
        "valid_auc": auc(valid_y[labelled], ens[labelled]),
        "history": [
            {"member": n, "weight": float(w), **{k: m[k] for k in ("valid_auc", "test_auc", "test_auc_last")}}
            for n, w, m in zip(names, weights, member_metrics, strict=True)
        ],
    }


@dataclass(frozen=True)
class EnsembleState:
    """The time of the student's last answer (for the default ``at``) and each member's own state."""

    last: pd.Timestamp | None
    members: tuple[Any, ...]


class EnsemblePredictor(Predictor):
    def __init__(self, bundle_dir: Path, meta: dict[str, Any], device: str = "cpu"):
        super().__init__(bundle_dir, meta)
        spec_file = bundle_dir / ENSEMBLE_FILE
        if not spec_file.is_file():
            raise BundleError(f"{bundle_dir}: ensemble bundle without {ENSEMBLE_FILE}")
        spec = json.loads(spec_file.read_text())
        self.members: list[Predictor] = [load_predictor(bundle_dir / m["dir"], device=device) for m in spec["members"]]
        self.weights = normalise([m["weight"] for m in spec["members"]])

    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        return weighted_mean([m.predict_rows(df, last_only=last_only) for m in self.members], self.weights)

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """The weighted mean of each member's own candidate path (its window, its features), as ``predict_rows``.

        ``at`` is fixed once here, so members that default it to "now" all see the same time.
        """
        fixed = [(h, c, resolve_at(h, at)) for h, c, at in jobs]
        per_member = [m.predict_candidates_batch(fixed) for m in self.members]
        return [weighted_mean([p[j] for p in per_member], self.weights) for j in range(len(jobs))]

    # ------------------------------------------------------------ incremental form: one state per member

    def initial_state(self) -> EnsembleState:
        return EnsembleState(last=None, members=tuple(m.initial_state() for m in self.members))

    def step(self, state: EnsembleState, answer: Mapping[str, Any]) -> EnsembleState:
        members = tuple(m.step(s, answer) for m, s in zip(self.members, state.members, strict=True))
        return EnsembleState(last=resolve_at(EMPTY_HISTORY, answer["Timestamp"]), members=members)

    def state_of(self, history: pd.DataFrame) -> EnsembleState:
        """Each member's own ``state_of`` (its fast way to a cold student's state)."""
        last = pd.Timestamp(history["Timestamp"].max()) if len(history) else None
        return EnsembleState(last=last, members=tuple(m.state_of(history) for m in self.members))

    def score(self, state: EnsembleState, candidates: pd.DataFrame, at: pd.Timestamp | None = None) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        # Fixed once here, so members that default it to "now" all see the same time (as the batch form).
        at = resolve_at(EMPTY_HISTORY if state.last is None else pd.DataFrame({"Timestamp": [state.last]}), at)
        probs = [m.score(s, candidates, at) for m, s in zip(self.members, state.members, strict=True)]
        return weighted_mean(probs, self.weights)


@register
class EnsembleKind(ModelKind):
    name = "ensemble"
    bundle_kind = "ensemble"

    @classmethod
    def train(cls, job: TrainJob) -> dict[str, Any]:
        return train_ensemble(job)

    @classmethod
    def load(cls, bundle_dir: Path, meta: dict[str, Any], device: str = "cpu") -> EnsemblePredictor:
        return EnsemblePredictor(bundle_dir, meta, device=device)

    @classmethod
    def hashed_config(cls, config_doc: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        """The ensemble's config names its members' config files; their content is what must be hashed."""
        members = json.loads((out_dir / ENSEMBLE_FILE).read_text())["members"]
        return config_doc | {"member_config_hashes": [read_meta(out_dir / m["dir"])["config_hash"] for m in members]}
