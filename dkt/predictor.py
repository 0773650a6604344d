"""Loading a bundle and answering questions with it: the one API serving and batch inference use.

All predictors take canonical interaction tables (see ``dkt.data.schema``) and
return P(correct). ``predict_rows`` scores every row from the rows before it;
``predict_last`` scores each user's last row; ``predict_candidates`` and
``knowledge_state`` answer "how would this student do on X next".
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dkt.bundle import read_meta
from dkt.config import parse_config
from dkt.data.features import FeatureEncoder, FeatureFrame
from dkt.data.sequences import Batcher, make_windows
from dkt.models import build_torch_model
from dkt.scoring import score_windows

CANDIDATE_GAP = pd.Timedelta(seconds=30)  # assumed time before a candidate when the caller gives none


class Predictor(ABC):
    def __init__(self, bundle_dir: Path, meta: dict[str, Any]):
        self.bundle_dir = bundle_dir
        self.meta = meta
        self.max_seq_len = int(meta["max_seq_len"])
        catalog_file = bundle_dir / "catalog.json"
        self.catalog: dict[str, list[list[str]]] = (
            json.loads(catalog_file.read_text()) if catalog_file.is_file() else {}
        )

    @property
    def model_name(self) -> str:
        return str(self.meta["model"])

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])

    @abstractmethod
    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        """P(correct) per row of ``df`` (input order); with ``last_only`` only each user's last row (NaN elsewhere)."""

    def predict_last(self, df: pd.DataFrame) -> pd.Series:
        """P(correct) of each user's last row in time order, indexed by userID."""
        prob = self.predict_rows(df, last_only=True)
        keep = ~np.isnan(prob)
        return pd.Series(prob[keep], index=df["userID"].to_numpy()[keep], name="prediction")

    def predict_candidates(
        self, history: pd.DataFrame, candidates: pd.DataFrame, at: pd.Timestamp | None = None
    ) -> np.ndarray:
        """P(correct) for each candidate item if it were asked next, after ``history`` (one student)."""
        if len(candidates) == 0:
            return np.zeros(0)
        history = history.tail(self.max_seq_len - 1)
        if at is None:
            at = history["Timestamp"].max() + CANDIDATE_GAP if len(history) else pd.Timestamp("2000-01-01")
        n, k = len(history), len(candidates)
        # One pseudo-user per candidate: the shared history followed by that candidate.
        rows = pd.concat([history] * k, ignore_index=True) if n else history.iloc[0:0]
        rows = rows.assign(userID=np.repeat(np.arange(k), n).astype(str))
        cand = pd.DataFrame(
            {
                "userID": np.arange(k).astype(str),
                "assessmentItemID": candidates["assessmentItemID"].astype(str).to_numpy(),
                "testId": candidates["testId"].astype(str).to_numpy(),
                "answerCode": np.full(k, -1, dtype="int8"),
                "Timestamp": np.full(k, at, dtype="datetime64[ns]"),
                "KnowledgeTag": candidates["KnowledgeTag"].astype("int64").to_numpy(),
            }
        )
        last = self.predict_last(pd.concat([rows, cand], ignore_index=True))
        return last.reindex(np.arange(k).astype(str)).to_numpy()

    def knowledge_state(self, history: pd.DataFrame, tags: list[int] | None = None) -> dict[int, float]:
        """Mastery per skill: mean P(correct) on that skill's typical items, asked next."""
        wanted = [str(t) for t in tags] if tags is not None else list(self.catalog)
        items = [(tag, item, test) for tag in wanted for item, test in self.catalog.get(tag, [])]
        if not items:
            return {}
        cands = pd.DataFrame(items, columns=["KnowledgeTag", "assessmentItemID", "testId"])
        cands["KnowledgeTag"] = cands["KnowledgeTag"].astype("int64")
        prob = self.predict_candidates(history, cands)
        return {int(t): float(p) for t, p in cands.assign(p=prob).groupby("KnowledgeTag")["p"].mean().items()}


class SequencePredictor(Predictor):
    """Torch sequence models (lstm, lstmattn, bert, saint, dkvmn)."""

    def __init__(self, bundle_dir: Path, meta: dict[str, Any], device: str = "cpu"):
        super().__init__(bundle_dir, meta)
        self.config = parse_config(json.loads((bundle_dir / "config.json").read_text()), str(bundle_dir))
        self.encoder = FeatureEncoder.from_dict(json.loads((bundle_dir / "encoder.json").read_text()))
        self.device = torch.device(device)
        self.model = build_torch_model(self.config.model, self.config.model_params, self.encoder.sizes())
        state = torch.load(bundle_dir / "weights.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    def score_frame(self, ff: FeatureFrame, last_only: bool = False) -> np.ndarray:
        windows = make_windows(ff, self.max_seq_len, max(1, self.max_seq_len // 2), last_only=last_only)
        if last_only:  # only the final position of each window is asked for
            lengths = (windows.index != -1).sum(axis=1)
            windows.score[:] = False
            windows.score[np.arange(len(windows)), lengths - 1] = True
        return score_windows(
            self.model, Batcher(ff), windows, len(ff), self.config.train.eval_batch_size, self.device
        )

    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        ff = self.encoder.transform(df)
        out = np.full(len(df), np.nan)
        out[ff.row_index] = self.score_frame(ff, last_only=last_only)
        return out


def load_predictor(bundle_dir: str | Path, device: str = "cpu") -> Predictor:
    """Load any model bundle written by ``train.py``."""
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    kind = meta["kind"]
    if kind == "sequence":
        return SequencePredictor(bundle_dir, meta, device=device)
    if kind == "lgbm":
        from dkt.models.lgbm import LGBMPredictor

        return LGBMPredictor(bundle_dir, meta)
    if kind == "ensemble":
        from dkt.models.ensemble import EnsemblePredictor

        return EnsemblePredictor(bundle_dir, meta, device=device)
    raise ValueError(f"{bundle_dir}: unknown bundle kind {kind!r}")
