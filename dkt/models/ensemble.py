"""Soft-voting ensemble: a weighted mean of the member models' P(correct), or of its log-odds.

Each member listed in ``config/ensemble.json`` is trained as a bundle of its own
under ``members/<nn>-<name>/`` (so it can be inspected, or served alone), with the
run's seed or its own (``seed``: several seeds of one config are members of their
own); the ensemble's ``ensemble.json`` names the member folders, their normalised
weights and how they are combined. With ``model_params.fit_weights`` the weights are
instead chosen to minimise log loss on the validation users (the same users that
early-stopped the members, so the ensemble's ``valid_auc`` is then slightly
optimistic); ``model_params.combine`` "auto" picks the mean of probabilities or of
log-odds by the same validation log loss. Nothing is chosen on the test file.

A member trained by an earlier run into the same folder from the same config, seed,
epoch cap and data (``member.json`` records them) is kept, not trained again: an
ensemble run that stopped part way resumes, and members added to the config cost only
their own training.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize

from dkt.bundle import BundleError, config_hash, read_meta, write_json
from dkt.config import ConfigError, load_config, parse_model_params
from dkt.data.io import fingerprint
from dkt.metrics import auc
from dkt.models.inputs import EMPTY_HISTORY, Job, resolve_at
from dkt.models.interface import ModelKind, Predictor, TrainJob, register
from dkt.predictor import load_predictor
from dkt.training import log_loss, resolve_device

MEMBERS_DIR = "members"
ENSEMBLE_FILE = "ensemble.json"
MEMBER_FILE = "member.json"  # in each member's folder: what it was trained from (member_key), for a rerun to keep it
EPS = 1e-6


class EnsembleParams(BaseModel):
    """``model_params`` of an ensemble config."""

    model_config = ConfigDict(extra="forbid")

    fit_weights: bool = Field(False, description="fit member weights on validation log loss instead of the config's")
    combine: Literal["prob", "logit", "auto"] = Field(
        "prob", description="weighted mean of P(correct), of its log-odds, or the one of lower validation log loss"
    )


def parse_params(params: dict[str, Any]) -> EnsembleParams:
    return parse_model_params(EnsembleParams, "ensemble", params)


def normalise(weights: list[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def weighted_mean(probs: list[np.ndarray], weights: np.ndarray, combine: str = "prob") -> np.ndarray:
    """Soft vote with weights summing to 1 (NaN where any member has none): sum of w_i * p_i, or with ``combine``
    "logit" the sigmoid of sum of w_i * logit(p_i) (members that agree on a confident answer stay confident)."""
    if combine == "logit":
        z = np.sum([w * logit(p) for w, p in zip(weights, probs, strict=True)], axis=0)
        return 1.0 / (1.0 + np.exp(-z))
    return np.sum([w * p for w, p in zip(weights, probs, strict=True)], axis=0)


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def fit_weights(
    probs: list[np.ndarray], y: np.ndarray, combine: str = "prob", groups: Sequence[Any] | None = None
) -> np.ndarray:
    """Weights on the simplex (softmax of free parameters) minimising validation log loss of the ``combine`` mean.
    L-BFGS, not Nelder-Mead: an ensemble of a dozen members is a dozen dimensions, where a simplex search stalls.

    ``groups`` (one label per member; default: each its own): members of one group share one fitted weight equally.
    Seeds of one config are exchangeable, and a weight per seed, fitted on the validation users that also
    early-stopped each seed, rewards whichever had the luckiest validation score: thirteen members fitted one by one
    got eleven weights under 0.01 (docs/sequence-models.md, round 6)."""
    labels = list(range(len(probs))) if groups is None else list(groups)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} group labels for {len(probs)} members")
    index = {g: i for i, g in enumerate(dict.fromkeys(labels))}
    member_group = np.array([index[g] for g in labels])
    size = np.bincount(member_group, minlength=len(index)).astype(np.float64)
    if len(index) == 1:
        return np.full(len(probs), 1.0 / len(probs))
    p = np.clip(np.stack(probs), EPS, 1 - EPS)

    def weights(theta: np.ndarray) -> np.ndarray:
        w = np.exp(theta - theta.max())
        return (w / w.sum())[member_group] / size[member_group]

    res = minimize(lambda t: log_loss(y, weighted_mean(list(p), weights(t), combine)), np.zeros(len(index)),
                   method="L-BFGS-B")  # fmt: skip
    return weights(res.x)


def choose_combine(
    probs: list[np.ndarray],
    y: np.ndarray | None,
    params: EnsembleParams,
    configured: np.ndarray,
    groups: Sequence[Any] | None = None,
) -> tuple[str, np.ndarray, dict[str, float]]:
    """The combine mode and weights to ship, and each candidate mode's validation log loss. ``y``: the labelled
    validation answers (None: too few to fit or choose on; the config's weights and mode then, "prob" for "auto").
    ``groups``: members that share a fitted weight (``fit_weights``)."""
    modes = ["prob", "logit"] if params.combine == "auto" else [params.combine]
    if y is None:
        return modes[0], configured, {}
    fitted = {m: fit_weights(probs, y, m, groups) if params.fit_weights else configured for m in modes}
    losses = {m: log_loss(y, weighted_mean(probs, fitted[m], m)) for m in modes}
    best = min(modes, key=lambda m: losses[m])
    return best, fitted[best], losses


def member_dir_name(i: int, model: str) -> str:
    return f"{i:02d}-{model}"


def member_key(config_doc: dict[str, Any], seed: int, job: TrainJob) -> dict[str, Any]:
    """What makes a member the model it is: its config, seed and epoch cap, the files and the validation rows (the
    files' fingerprints do not say which users the run held out)."""
    return {"config_hash": config_hash(config_doc), "seed": seed, "epochs": job.epochs,
            "data": job.data.fingerprints, "valid": fingerprint(job.data.valid)}  # fmt: skip


def kept_member(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of a member an earlier run of this ensemble trained into ``folder`` from the same ``key`` (a
    run that stopped part way, or members added to the config): None when there is none, or it differs."""
    try:
        read_meta(folder)  # complete: bundle.json is written last
        if json.loads((folder / MEMBER_FILE).read_text()) != key:
            return None
        return dict(json.loads((folder / "metrics.json").read_text()))
    except (BundleError, OSError, ValueError):
        return None


def train_ensemble(job: TrainJob) -> dict[str, Any]:
    """Train every member into ``out_dir/members/`` and write ``ensemble.json``; returns the fit summary.

    Members are trained by ``job.train_member``: the same entry point as any model (``dkt.experiment.run``).
    """
    config, data, out_dir = job.config, job.data, job.out_dir
    params = parse_params(config.model_params)
    # Read every member config first so a typo fails before hours of training.
    member_cfgs: list[tuple[Path, Any, int]] = []
    seen: dict[tuple[Path, int], int] = {}
    for i, m in enumerate(config.members):
        path = Path(m.config) if Path(m.config).is_absolute() else job.config_dir / m.config
        cfg = load_config(path)
        if cfg.model == "ensemble":
            raise ConfigError(f"{path}: members[{i}] is itself an ensemble; list its members here instead")
        seed = job.seed if m.seed is None else m.seed
        twin = seen.setdefault((path.resolve(), seed), i)
        if twin != i:  # the same config and seed train the same model twice: a weight, not a member
            raise ConfigError(f"members[{i}] repeats members[{twin}] ({m.config}, seed {seed}): give it another seed")
        member_cfgs.append((path, cfg, seed))

    names, member_metrics = [], []
    for i, (path, cfg, seed) in enumerate(member_cfgs):
        name = member_dir_name(i, cfg.model)
        folder, key = out_dir / MEMBERS_DIR / name, member_key(cfg.model_dump(mode="json"), seed, job)
        said = f"ensemble member {i + 1}/{len(member_cfgs)}: {cfg.model} ({path}, seed {seed})"
        metrics = kept_member(folder, key)
        if metrics is not None:
            print(f"{said}: kept, trained before from the same config, seed, epochs and data", file=sys.stderr)
        else:
            print(said, file=sys.stderr, flush=True)
            metrics = job.train_member(path, folder, seed)
            write_json(folder / MEMBER_FILE, key)
        names.append(name)
        member_metrics.append(metrics)

    valid_y = data.valid["answerCode"].to_numpy()
    labelled = valid_y >= 0
    dev = str(resolve_device(job.device))
    probs = [load_predictor(out_dir / MEMBERS_DIR / n, device=dev).predict_rows(data.valid) for n in names]
    # Fit and choose on labelled validation answers; as configured when they hold one class or none.
    fit_y = valid_y[labelled].astype(np.float64) if len(np.unique(valid_y[labelled])) == 2 else None
    configured = normalise([m.weight for m in config.members])
    groups = [path.resolve() for path, _, _ in member_cfgs]  # the seeds of one config share one fitted weight
    combine, weights, losses = choose_combine([p[labelled] for p in probs], fit_y, params, configured, groups)
    write_json(
        out_dir / ENSEMBLE_FILE,
        {"combine": combine,
         "members": [{"dir": f"{MEMBERS_DIR}/{n}", "weight": float(w)} for n, w in zip(names, weights, strict=True)]},
    )  # fmt: skip
    print(f"ensemble: {combine} mean, weights {np.round(weights, 3).tolist()}"
          + (f", validation log loss {losses}" if losses else ""), file=sys.stderr)  # fmt: skip
    ens = weighted_mean(probs, weights, combine)
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
        self.combine = str(spec.get("combine", "prob"))  # bundles made before the option mean probabilities
        if self.combine not in ("prob", "logit"):
            raise BundleError(f"{spec_file}: combine {self.combine!r} is neither 'prob' nor 'logit'")

    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        probs = [m.predict_rows(df, last_only=last_only) for m in self.members]
        return weighted_mean(probs, self.weights, self.combine)

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """The weighted mean of each member's own candidate path (its window, its features), as ``predict_rows``.

        ``at`` is fixed once here, so members that default it to "now" all see the same time.
        """
        fixed = [(h, c, resolve_at(h, at)) for h, c, at in jobs]
        per_member = [m.predict_candidates_batch(fixed) for m in self.members]
        return [weighted_mean([p[j] for p in per_member], self.weights, self.combine) for j in range(len(jobs))]

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
        return weighted_mean(probs, self.weights, self.combine)


@register
class EnsembleKind(ModelKind):
    name = "ensemble"
    bundle_kind = "ensemble"

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        parse_params(params)

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
