"""What the torch sequence kinds (lstm, lstmattn, bert, saint, dkvmn) share: training, the bundle's
``weights.pt``, windowed scoring, and an incremental form that keeps the window as the state.

A sequence kind sets ``config_class`` (a dataclass of its ``model_params``) and ``module_class`` (an
``nn.Module`` whose ``forward(batch)`` returns one logit per position, causal: see ``dkt.models.base``).
Every position is scored in the window ``dkt.data.sequences.window_start`` gives it, offline and online.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from dkt.config import ExperimentConfig, parse_config
from dkt.data.features import FeatureEncoder, FeatureFrame
from dkt.data.sequences import PAD_ROW, Batcher, Windows, scoring_windows, window_start
from dkt.models.base import build_config
from dkt.models.inputs import (
    EncodedCandidates,
    Job,
    StudentFeatures,
    encode_candidates,
    frame_rows,
    stack_frames,
)
from dkt.models.interface import ModelKind, Predictor, TrainJob
from dkt.scoring import score_windows
from dkt.training import (
    WarmStartRefused,
    count_params,
    fit_sequence_model,
    resolve_device,
    vocabulary_rows,
    warm_start,
)

WEIGHTS_FILE = "weights.pt"


def candidate_windows(histories: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> Windows:
    """One window per candidate: its job's history rows (already cut by the window rule), then the candidate."""
    width = max(len(h) for h in histories) + 1
    index = np.full((sum(len(c) for c in candidates), width), PAD_ROW, dtype=np.int64)
    score = np.zeros(index.shape, dtype=bool)
    w = 0
    for hist, cands in zip(histories, candidates, strict=True):
        k, n = len(cands), len(hist)
        index[w : w + k, :n] = hist
        index[w : w + k, n] = cands
        score[w : w + k, n] = True
        w += k
    return Windows(index=index, score=score)


@dataclass(frozen=True)
class WindowState:
    """A student's running features and the encoded rows [window_start(m), m) of their m answers: what the
    window scoring the next row holds. At most ``max_seq_len - 1`` rows."""

    features: StudentFeatures = field(default_factory=StudentFeatures)
    window: FeatureFrame | None = None  # None: no rows yet


class SequencePredictor(Predictor):
    """A torch sequence model over a bundle; every position scored in its window (``window_start``)."""

    def __init__(
        self,
        bundle_dir: Path,
        meta: dict[str, Any],
        config: ExperimentConfig,
        encoder: FeatureEncoder,
        model: nn.Module,
        device: str = "cpu",
    ):
        super().__init__(bundle_dir, meta)
        self.config = config
        self.encoder = encoder
        self.device = torch.device(device)
        self.model = model
        state = torch.load(bundle_dir / WEIGHTS_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    def _score(self, ff: FeatureFrame, windows: Windows) -> np.ndarray:
        return score_windows(self.model, Batcher(ff), windows, len(ff), self.config.train.eval_batch_size, self.device)

    def score_frame(self, ff: FeatureFrame, last_only: bool = False) -> np.ndarray:
        targets = ff.user_starts[1:] - 1 if last_only else None  # last_only: each user's final row
        return self._score(ff, scoring_windows(ff, self.max_seq_len, targets))

    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        ff = self.encoder.transform(df)
        out = np.full(len(df), np.nan)
        out[ff.row_index] = self.score_frame(ff, last_only=last_only)
        return out

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Same results as the generic path, but each history is encoded once per job, not once per candidate.

        All candidates of a job are encoded after its full history (``encode_candidates``); each is then
        scored in its own window: the history rows from ``window_start(n)`` on, then that candidate.
        """
        results = [np.zeros(0) for _ in jobs]
        enc = encode_candidates(self.encoder, jobs)
        if enc is None:
            return results
        histories = []
        for u, (_, n, _) in enumerate(enc.jobs):
            first = int(enc.ff.user_starts[u])
            histories.append(np.arange(first + int(window_start(n, self.max_seq_len)), first + n))
        prob = self.score_candidate_windows(enc, histories)
        for u, (j, _, _) in enumerate(enc.jobs):
            results[j] = prob[enc.candidate_rows(u)]
        return results

    def score_candidate_windows(self, enc: EncodedCandidates, histories: list[np.ndarray]) -> np.ndarray:
        """P(correct) per row of ``enc.ff`` for the candidate rows (NaN elsewhere); ``histories[u]``: the rows
        of job u's window before its candidates. A kind with a faster exact way overrides this."""
        cands = [enc.candidate_rows(u) for u in range(len(enc.jobs))]
        return self._score(enc.ff, candidate_windows(histories, cands))

    # ------------------------------------------------------------ incremental form: the window as state

    def initial_state(self) -> WindowState:
        return WindowState()

    def step(self, state: WindowState, answer: Mapping[str, Any]) -> WindowState:
        row, features = state.features.after(self.encoder, answer)
        rows = row if state.window is None else stack_frames([state.window, row])
        # Keep the rows the next position's window starts from: rows [window_start(m), m) of m answers.
        m = features.position
        keep = len(rows) - (m - int(window_start(m, self.max_seq_len)))
        return WindowState(features=features, window=frame_rows(rows, np.arange(keep, len(rows))))

    def encode_history(self, history: pd.DataFrame) -> tuple[pd.DataFrame, FeatureFrame]:
        """(``history``, its rows encoded as one student's in time order, ``ff.row_index`` mapping them to its rows):
        what ``state_of`` starts from, from the table's columns (no sorted copy, no userID column)."""
        return history, self.encoder.encode_table(history)

    def state_of(self, history: pd.DataFrame) -> WindowState:
        """The state ``step`` reaches, in one encoding of the history: a cold student costs one pass."""
        if len(history) == 0:
            return self.initial_state()
        hist, ff = self.encode_history(history)
        m = len(ff)
        return WindowState(
            features=StudentFeatures.of(ff, hist),
            window=frame_rows(ff, np.arange(int(window_start(m, self.max_seq_len)), m)),
        )

    def score(self, state: WindowState, candidates: pd.DataFrame, at: pd.Timestamp | None = None) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        cands = state.features.encode(self.encoder, candidates, at)
        n = 0 if state.window is None else len(state.window)
        ff = cands if state.window is None else stack_frames([state.window, cands])
        prob = self._score(ff, candidate_windows([np.arange(n)], [np.arange(n, len(ff))]))
        return prob[n:]


class SequenceKind(ModelKind):
    """Base of the torch kinds: subclasses set ``name``, ``config_class`` and ``module_class``."""

    bundle_kind: ClassVar[str] = "sequence"
    config_class: ClassVar[type]
    module_class: ClassVar[type[nn.Module]]
    predictor_class: ClassVar[type[SequencePredictor]] = SequencePredictor

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        build_config(cls.config_class, params)

    @classmethod
    def build(cls, params: dict[str, Any], sizes: dict[str, int]) -> nn.Module:
        """A fresh (untrained) model from ``model_params`` and the encoder's vocabulary sizes."""
        return cls.module_class(build_config(cls.config_class, params), sizes)

    @classmethod
    def train(cls, job: TrainJob) -> dict[str, Any]:
        config, out = job.config, job.out_dir
        model = cls.build(config.model_params, job.encoder.sizes())
        if job.init_from is not None:
            cls.warm_start(model, job)

        def save(m: nn.Module, epoch: int, valid_auc: float) -> None:
            torch.save(m.state_dict(), out / (WEIGHTS_FILE + ".tmp"))
            (out / (WEIGHTS_FILE + ".tmp")).replace(out / WEIGHTS_FILE)

        result = fit_sequence_model(
            model,
            job.encoder.transform(job.data.train),
            job.encoder.transform(job.data.valid),
            config.train,
            resolve_device(job.device),
            job.seed,
            job.epochs,
            on_improve=save,
            progress=job.progress,
        )
        return {
            "n_params": count_params(model),
            "train_seconds": result.train_seconds,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds_per_epoch": result.train_seconds / max(1, result.epochs_run),
            "valid_auc": result.best_valid_auc,
            "selected_by": result.selected_by,
            "selection_reason": result.selection_reason,
            "history": result.history,
        }

    @classmethod
    def warm_refusal(cls, src: Path, model_params: Mapping[str, Any]) -> str | None:
        """Why the bundle ``src`` cannot seed a model of this kind with ``model_params``; None when it can (the
        retrain step asks before it picks a warm start's fine-tuning settings, pipeline.retrain)."""
        try:
            meta = json.loads((src / "bundle.json").read_text())
            old_config = json.loads((src / "config.json").read_text())
        except (OSError, ValueError) as exc:
            return str(exc)
        if meta.get("model") != cls.name:
            return f"it is a {meta.get('model')} model, this is {cls.name}"
        if old_config.get("model_params") != dict(model_params):
            return "its model_params differ from this config's"
        return None

    @classmethod
    def warm_start(cls, model: nn.Module, job: TrainJob) -> bool:
        """Seed ``model`` with the weights of the bundle ``job.init_from`` when it is this kind with the same
        ``model_params`` (new vocabulary rows start fresh, ``dkt.training.warm_start``); otherwise say why and
        leave the model untouched (training from scratch). Returns whether it was seeded."""
        src = Path(job.init_from or "")
        try:
            if why := cls.warm_refusal(src, job.config.model_params):
                raise WarmStartRefused(why)
            meta = json.loads((src / "bundle.json").read_text())
            old = FeatureEncoder.from_dict(json.loads((src / "encoder.json").read_text()))
            state = torch.load(src / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            with torch.no_grad():
                note = warm_start(model, state, vocabulary_rows(old, job.encoder))
        except (OSError, ValueError, KeyError, WarmStartRefused) as exc:
            print(f"warm start: not from {src} ({exc}): training from scratch", file=sys.stderr)
            return False
        print(f"warm start: from {src} ({meta.get('model_version')}): {note}", file=sys.stderr)
        return True

    @classmethod
    def load(cls, bundle_dir: Path, meta: dict[str, Any], device: str = "cpu") -> SequencePredictor:
        config = parse_config(json.loads((bundle_dir / "config.json").read_text()), str(bundle_dir))
        encoder = FeatureEncoder.from_dict(json.loads((bundle_dir / "encoder.json").read_text()))
        model = cls.build(config.model_params, encoder.sizes())
        return cls.predictor_class(bundle_dir, meta, config, encoder, model, device)
