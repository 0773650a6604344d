"""Loading a bundle and answering questions with it: the one API serving and batch inference use.

All predictors take canonical interaction tables (see ``dkt.data.schema``) and
return P(correct). ``predict_rows`` scores every row from the rows before it;
``predict_last`` scores each user's last row; ``predict_candidates`` and
``knowledge_state`` answer "how would this student do on X next".

Train/serve parity: a candidate shown at ``at`` after a history is scored
exactly as the same item would be as an answerCode -1 row at time ``at`` in a
file holding that history (``predict_rows``, which ``inference.py`` and test
evaluation use): features over the whole history, then the window that
``dkt.data.sequences.window_start`` gives its position.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dkt.bundle import read_meta
from dkt.config import parse_config
from dkt.data.features import CONTINUOUS, FeatureEncoder, FeatureFrame
from dkt.data.sequences import PAD_ROW, Batcher, Windows, scoring_windows, to_device, window_start
from dkt.models import build_torch_model
from dkt.models.lstm import LSTMModel
from dkt.scoring import score_windows

ELAPSED_COLUMN = CONTINUOUS.index("elapsed_s")
HISTORY_COLUMNS = ("assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag")

Job = tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]  # (history, candidates, at)


def resolve_at(history: pd.DataFrame, at: pd.Timestamp | str | None) -> pd.Timestamp:
    """When the candidates are shown (naive UTC): ``at``, or by default now.

    The default is never before the history's last answer: a caller that gives no time means "next",
    and a clock a little behind the one that stamped the answers must not hide them.
    """
    if at is not None:
        ts = pd.Timestamp(at)
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    return max(now, history["Timestamp"].max()) if len(history) else now


def known_before(history: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """The answers given by the time a candidate is shown at ``at``: later ones are its future, as offline."""
    return history[history["Timestamp"] <= at]


def candidate_rows(candidates: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """Candidates as answerCode -1 rows shown at ``at`` (no userID)."""
    k = len(candidates)
    return pd.DataFrame(
        {
            "assessmentItemID": candidates["assessmentItemID"].astype(str).to_numpy(),
            "testId": candidates["testId"].astype(str).to_numpy(),
            "answerCode": np.full(k, -1, dtype="int8"),
            "Timestamp": np.full(k, at, dtype="datetime64[ns]"),
            "KnowledgeTag": candidates["KnowledgeTag"].astype("int64").to_numpy(),
        }
    )


@dataclass
class EncodedCandidates:
    """Every job's full history followed by its candidates, encoded as one user per job.

    ``ff`` rows of job ``u`` (in ``jobs`` order) start at ``ff.user_starts[u]``: ``n`` history rows, then
    ``k`` candidate rows whose features are each what that candidate would get as the row right after
    the history (see ``encode_candidates``).
    """

    ff: FeatureFrame
    table: pd.DataFrame  # the encoded table in input order (``ff.row_index`` maps sorted rows into it)
    jobs: list[tuple[int, int, int]]  # (job number, n history rows, k candidates)

    def candidate_rows(self, u: int) -> np.ndarray:
        _, n, k = self.jobs[u]
        first = int(self.ff.user_starts[u]) + n
        return np.arange(first, first + k)


def encode_candidates(encoder: FeatureEncoder, jobs: Sequence[Job]) -> EncodedCandidates | None:
    """Encode all jobs with candidates at once; ``None`` when no job has any.

    A candidate row's features depend on the rows before it. Candidates are answerCode -1 rows, so the
    running counts and accuracies do not move between them; only what describes the previous row
    (elapsed time, previous response) would see the candidate before it, and is copied from the first
    candidate, which follows the history directly.
    """
    frames, layout = [], []
    for j, (history, candidates, at) in enumerate(jobs):
        if len(candidates) == 0:
            continue
        at = resolve_at(history, at)
        hist = known_before(history, at).loc[:, list(HISTORY_COLUMNS)]
        # Candidates come after the history in input order: the stable time sort keeps them after
        # answers given in the same second, as an answerCode -1 row after them in a file would be.
        table = pd.concat([hist, candidate_rows(candidates, at)], ignore_index=True)
        frames.append(table.assign(userID=f"{len(layout):08d}"))  # zero-padded: users sort in job order
        layout.append((j, len(hist), len(candidates)))
    if not layout:
        return None
    table = pd.concat(frames, ignore_index=True)
    ff = encoder.transform(table)
    for u, (_, n, k) in enumerate(layout):
        first = int(ff.user_starts[u]) + n
        ff.cat["elapsed"][first + 1 : first + k] = ff.cat["elapsed"][first]
        for name in ff.resp:
            ff.resp[name][first + 1 : first + k] = ff.resp[name][first]
        ff.cont[first + 1 : first + k, ELAPSED_COLUMN] = ff.cont[first, ELAPSED_COLUMN]
    return EncodedCandidates(ff=ff, table=table, jobs=layout)


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
        """P(correct) for each candidate item if it were shown at ``at`` (default now) after ``history`` (one student).

        The reference path: one pseudo-user per candidate (the history, then that candidate as an
        answerCode -1 row), scored by ``predict_rows`` exactly as ``inference.py`` scores a file.
        """
        if len(candidates) == 0:
            return np.zeros(0)
        at = resolve_at(history, at)
        history = known_before(history, at).loc[:, list(HISTORY_COLUMNS)]
        n, k = len(history), len(candidates)
        rows = pd.concat([history] * k, ignore_index=True) if n else history.iloc[0:0]
        rows = rows.assign(userID=np.repeat(np.arange(k), n).astype(str))
        cand = candidate_rows(candidates, at).assign(userID=np.arange(k).astype(str))
        last = self.predict_last(pd.concat([rows, cand], ignore_index=True))
        return last.reindex(np.arange(k).astype(str)).to_numpy()

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """``predict_candidates`` for several (history, candidates, at) jobs at once (serving batches requests)."""
        return [self.predict_candidates(history, candidates, at) for history, candidates, at in jobs]

    def catalog_candidates(self, tags: list[int] | None = None) -> pd.DataFrame:
        """The typical items of each skill (all skills by default) as a candidates frame."""
        wanted = [str(t) for t in tags] if tags is not None else list(self.catalog)
        items = [(tag, item, test) for tag in wanted for item, test in self.catalog.get(tag, [])]
        cands = pd.DataFrame(items, columns=["KnowledgeTag", "assessmentItemID", "testId"])
        cands["KnowledgeTag"] = cands["KnowledgeTag"].astype("int64")
        return cands

    @staticmethod
    def mastery(candidates: pd.DataFrame, prob: np.ndarray) -> dict[int, float]:
        """Mean P(correct) per KnowledgeTag of ``catalog_candidates`` scored by ``predict_candidates``."""
        grouped = candidates.assign(p=prob).groupby("KnowledgeTag")["p"].mean()
        return {int(t): float(p) for t, p in grouped.items()}

    def knowledge_state(self, history: pd.DataFrame, tags: list[int] | None = None) -> dict[int, float]:
        """Mastery per skill: mean P(correct) on that skill's typical items, asked next."""
        cands = self.catalog_candidates(tags)
        if not len(cands):
            return {}
        return self.mastery(cands, self.predict_candidates(history, cands))


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
        targets = ff.user_starts[1:] - 1 if last_only else None  # last_only: each user's final row
        windows = scoring_windows(ff, self.max_seq_len, targets)
        return score_windows(self.model, Batcher(ff), windows, len(ff), self.config.train.eval_batch_size, self.device)

    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        ff = self.encoder.transform(df)
        out = np.full(len(df), np.nan)
        out[ff.row_index] = self.score_frame(ff, last_only=last_only)
        return out

    def predict_candidates(
        self, history: pd.DataFrame, candidates: pd.DataFrame, at: pd.Timestamp | None = None
    ) -> np.ndarray:
        return self.predict_candidates_batch([(history, candidates, at)])[0]

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Same results as the generic path, but each history is encoded once per job, not once per candidate.

        All candidates of a job are encoded after its full history (``encode_candidates``); each is then
        scored in its own window: the history rows from ``window_start(n)`` on, then that candidate.
        """
        results = [np.zeros(0) for _ in jobs]
        enc = encode_candidates(self.encoder, jobs)
        if enc is None:
            return results
        ff = enc.ff
        starts = [int(window_start(n, self.max_seq_len)) for _, n, _ in enc.jobs]
        width = max(n - s for (_, n, _), s in zip(enc.jobs, starts, strict=True)) + 1
        index = np.full((sum(k for _, _, k in enc.jobs), width), PAD_ROW, dtype=np.int64)
        score = np.zeros(index.shape, dtype=bool)
        w = 0
        for u, ((_, n, k), s) in enumerate(zip(enc.jobs, starts, strict=True)):
            first = int(ff.user_starts[u])
            index[w : w + k, : n - s] = np.arange(first + s, first + n)
            index[w : w + k, n - s] = enc.candidate_rows(u)
            score[w : w + k, n - s] = True
            w += k
        if isinstance(self.model, LSTMModel):
            prob = self._lstm_next(ff, index, score)
        else:
            windows = Windows(index=index, score=score)
            batch_size = self.config.train.eval_batch_size
            prob = score_windows(self.model, Batcher(ff), windows, len(ff), batch_size, self.device)
        for u, (j, _, _) in enumerate(enc.jobs):
            results[j] = prob[enc.candidate_rows(u)]
        return results

    @torch.no_grad()
    def _lstm_next(self, ff: FeatureFrame, index: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Candidate windows scored by running each history through the LSTM once, then one step per candidate.

        Exact for the LSTM (its state after the history is all a next step needs); the window path would
        repeat the history once per candidate, which dominated serving latency.
        """
        model = self.model
        batcher = Batcher(ff)
        lengths = score.argmax(axis=1)  # history length of each window: the candidate sits right after it
        target = index[np.arange(len(index)), lengths]
        # Windows of one job share the history: key each distinct history by its first row and length.
        starts = np.where(lengths > 0, index[:, 0], -1 - np.arange(len(index)))
        _, first, job = np.unique(np.stack([starts, lengths], axis=1), axis=0, return_index=True, return_inverse=True)
        job = job.reshape(-1)
        hist_len = lengths[first]
        width = max(1, int(hist_len.max()))
        hist_index = np.full((len(first), width), PAD_ROW, dtype=np.int64)
        for h, (w, n) in enumerate(zip(first, hist_len, strict=True)):
            hist_index[h, :n] = index[w, :n]
        hidden = model.lstm.num_layers, len(first), model.lstm.hidden_size
        state = torch.zeros(hidden, device=self.device), torch.zeros(hidden, device=self.device)
        has_hist = hist_len > 0
        if has_hist.any():
            batch = to_device(batcher.batch(hist_index[has_hist]), self.device)
            query, interaction = model.inp(batch)
            packed = nn.utils.rnn.pack_padded_sequence(
                torch.cat([query, interaction], dim=-1),
                torch.from_numpy(hist_len[has_hist]),
                batch_first=True,
                enforce_sorted=False,
            )
            _, (h_n, c_n) = model.lstm(packed)
            keep = torch.from_numpy(np.flatnonzero(has_hist)).to(self.device)
            state[0][:, keep] = h_n
            state[1][:, keep] = c_n
        batch = to_device(batcher.batch(target[:, None]), self.device)
        query, interaction = model.inp(batch)
        pick = torch.from_numpy(job).to(self.device)
        out, _ = model.lstm(
            torch.cat([query, interaction], dim=-1), (state[0][:, pick].contiguous(), state[1][:, pick].contiguous())
        )
        prob = torch.sigmoid(model.head(torch.cat([out, query], dim=-1)).float())[:, 0].cpu().numpy()
        result = np.full(len(ff), np.nan)
        result[target] = prob
        return result


def load_predictor(bundle_dir: str | Path, device: str = "cpu", meta: dict[str, Any] | None = None) -> Predictor:
    """Load any model bundle written by ``train.py``.

    ``meta`` stands in for ``bundle.json``: train.py loads and smoke-tests a bundle before it writes that file.
    """
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir) if meta is None else meta
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
