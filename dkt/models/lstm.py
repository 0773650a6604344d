"""LSTM-DKT (Piech et al., 2015): a recurrent state of the student's knowledge.

At step t the LSTM reads the item asked at t together with the response given
at t-1, so its state after step t predicts the answer at t without seeing it.

The recurrent state is all a next step needs, so this kind scores candidates by running a history
through the LSTM once and then one step per candidate (``LSTMPredictor.score_candidate_windows``), and
its incremental form keeps that state: one O(1) step per answer (``LSTMPredictor.step``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dkt.data.features import FeatureFrame
from dkt.data.sequences import PAD_ROW, Batcher, eval_stride, to_device, window_start
from dkt.models.base import InputConfig, InputEmbedding, PredictionHead, input_lstm
from dkt.models.inputs import EncodedCandidates, StudentFeatures
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind, SequencePredictor

Recurrent = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (n_layers, batch, hidden_dim)


@dataclass
class LSTMConfig(InputConfig):
    hidden_dim: int = 128
    n_layers: int = 1
    dropout: float = 0.2


class LSTMModel(nn.Module):
    def __init__(self, cfg: LSTMConfig, sizes: dict[str, int]):
        super().__init__()
        self.inp = InputEmbedding(cfg, sizes)
        self.lstm = input_lstm(cfg)
        self.head = PredictionHead(cfg.hidden_dim + cfg.d_model, cfg.dropout)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(LSTM input, query) per position."""
        query, interaction = self.inp(batch)
        return torch.cat([query, interaction], dim=-1), query

    def readout(self, h: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        # The query again beside the state: the head compares "what is asked" with "what is known".
        return self.head(torch.cat([h, query], dim=-1))

    def zero_state(self, batch: int, device: torch.device) -> Recurrent:
        shape = self.lstm.num_layers, batch, self.lstm.hidden_size
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, query = self.embed(batch)
        h, _ = self.lstm(x)
        return self.readout(h, query)


@dataclass(frozen=True)
class LSTMState:
    """A student's running features and, for each window start (a multiple of ``eval_stride``) from
    ``window_start`` of the next position up to that position, the LSTM state over that window's rows
    (None: no rows yet). The next answer is scored from the first; the others are ready for when the
    window rule moves on. At most ``max_seq_len / stride + 1`` (3) states, each updated once per answer."""

    features: StudentFeatures = field(default_factory=StudentFeatures)
    windows: tuple[tuple[int, Recurrent | None], ...] = ((0, None),)


class LSTMPredictor(SequencePredictor):
    model: LSTMModel

    def _embed_rows(self, ff: FeatureFrame, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed(to_device(Batcher(ff).batch(index), self.device))

    @torch.no_grad()
    def score_candidate_windows(self, enc: EncodedCandidates, histories: list[np.ndarray]) -> np.ndarray:
        """Each job's window run through the LSTM once, then one step per candidate from the state it ends in.

        Exact for the LSTM (its state after the history is all a next step needs); the window path would
        repeat the history once per candidate, which dominated serving latency.
        """
        ff, model = enc.ff, self.model
        hist_len = np.array([len(h) for h in histories], dtype=np.int64)
        hist_index = np.full((len(histories), max(1, int(hist_len.max()))), PAD_ROW, dtype=np.int64)
        for u, rows in enumerate(histories):
            hist_index[u, : len(rows)] = rows
        state = model.zero_state(len(histories), self.device)
        has_hist = hist_len > 0
        if has_hist.any():
            x, _ = self._embed_rows(ff, hist_index[has_hist])
            packed = nn.utils.rnn.pack_padded_sequence(
                x, torch.from_numpy(hist_len[has_hist]), batch_first=True, enforce_sorted=False
            )
            _, (h_n, c_n) = model.lstm(packed)
            keep = torch.from_numpy(np.flatnonzero(has_hist)).to(self.device)
            state[0][:, keep] = h_n
            state[1][:, keep] = c_n
        cands = [enc.candidate_rows(u) for u in range(len(histories))]
        target = np.concatenate(cands)
        job = np.repeat(np.arange(len(histories)), [len(c) for c in cands])
        prob = self._next(state, torch.from_numpy(job).to(self.device), ff, target)
        result = np.full(len(ff), np.nan)
        result[target] = prob
        return result

    def _next(self, state: Recurrent, pick: torch.Tensor, ff: FeatureFrame, rows: np.ndarray) -> np.ndarray:
        """P(correct) of each row in ``rows`` of ``ff`` as the step after ``state[:, pick]``."""
        x, query = self._embed_rows(ff, rows[:, None])
        out, _ = self.model.lstm(x, (state[0][:, pick].contiguous(), state[1][:, pick].contiguous()))
        return torch.sigmoid(self.model.readout(out, query).float())[:, 0].cpu().numpy()

    # ------------------------------------------------------------ incremental form: the recurrent state

    def initial_state(self) -> LSTMState:
        return LSTMState()

    @torch.no_grad()
    def step(self, state: LSTMState, answer: Mapping[str, Any]) -> LSTMState:
        row, features = state.features.after(self.encoder, answer)
        x, _ = self._embed_rows(row, np.zeros((1, 1), dtype=np.int64))
        windows = []
        m = features.position
        first = int(window_start(m, self.max_seq_len))
        for start, rec in state.windows:
            if start >= first:  # windows that start before the next position's are done with
                _, rec = self.model.lstm(x, rec)
                windows.append((start, rec))
        if m % eval_stride(self.max_seq_len) == 0:
            windows.append((m, None))
        return LSTMState(features=features, windows=tuple(windows))

    @torch.no_grad()
    def state_of(self, history: pd.DataFrame) -> LSTMState:
        """The state ``step`` reaches, with each live window's rows run through the LSTM in one call."""
        if len(history) == 0:
            return self.initial_state()
        hist, ff = self.encode_history(history)
        m = len(ff)
        windows: list[tuple[int, Recurrent | None]] = []
        for start in range(int(window_start(m, self.max_seq_len)), m + 1, eval_stride(self.max_seq_len)):
            if start == m:  # a window that starts at the next position holds no rows yet
                windows.append((m, None))
                continue
            x, _ = self._embed_rows(ff, np.arange(start, m)[None, :])
            _, rec = self.model.lstm(x)
            windows.append((start, rec))
        return LSTMState(features=StudentFeatures.of(ff, hist), windows=tuple(windows))

    @torch.no_grad()
    def score(self, state: LSTMState, candidates: pd.DataFrame, at: pd.Timestamp | None = None) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        ff = state.features.encode(self.encoder, candidates, at)
        rec = state.windows[0][1] or self.model.zero_state(1, self.device)
        return self._next(rec, torch.zeros(len(ff), dtype=torch.long, device=self.device), ff, np.arange(len(ff)))


@register
class LSTMKind(SequenceKind):
    name = "lstm"
    config_class = LSTMConfig
    module_class = LSTMModel
    predictor_class = LSTMPredictor
