"""LSTM-DKT (Piech et al., 2015): a recurrent state of the student's knowledge.

At step t the LSTM reads the item asked at t together with the response given
at t-1, so its state after step t predicts the answer at t without seeing it.

The recurrent state is all a next step needs, so this kind scores candidates by running a history
through the LSTM once and then one step per candidate (``LSTMPredictor.score_candidate_windows``), and
its incremental form keeps that state: one O(1) step per answer (``LSTMPredictor.step``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from dkt.data.features import FeatureFrame
from dkt.data.sequences import PAD_ROW, Batcher, eval_stride, to_device, window_start
from dkt.models.base import InputConfig, InputEmbedding, PredictionHead, check_positive_ints, input_lstm
from dkt.models.inputs import CandidateColumns, EncodedCandidates, StudentFeatures, candidate_columns, stack_frames
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind, SequencePredictor

Recurrent = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (n_layers, batch, hidden_dim)


LSTM_INPUTS = ("concat", "sum")


@dataclass
class LSTMConfig(InputConfig):
    hidden_dim: int = 128
    n_layers: int = 1
    dropout: float = 0.2
    # What the LSTM reads per step: query and interaction side by side ("concat", 2 * d_model wide) or added
    # ("sum", d_model wide: the reference DKT's width; docs/training-speed.md).
    lstm_input: str = "concat"
    head_dim: int | None = None  # the prediction head's hidden width; None: as wide as its input

    def __post_init__(self) -> None:
        if self.lstm_input not in LSTM_INPUTS:
            raise ValueError(f"LSTMConfig.lstm_input must be one of {LSTM_INPUTS}, got {self.lstm_input!r}")
        if self.head_dim is not None:
            check_positive_ints(self, ("head_dim",))


class LSTMModel(nn.Module):
    def __init__(self, cfg: LSTMConfig, sizes: dict[str, int]):
        super().__init__()
        self.summed = cfg.lstm_input == "sum"
        self.inp = InputEmbedding(cfg, sizes)
        self.lstm = input_lstm(cfg, cfg.d_model if self.summed else None)
        self.head = PredictionHead(cfg.hidden_dim + cfg.d_model, cfg.dropout, cfg.head_dim, cfg.dropout_mask)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(LSTM input, query) per position."""
        query, interaction = self.inp(batch)
        return (query + interaction if self.summed else torch.cat([query, interaction], dim=-1)), query

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


def lstm_step(lstm: nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The top layer's output of one time step of ``lstm`` (in eval mode) for rows ``x`` (rows, input) from states
    ``h``, ``c`` (layers, rows, hidden): nn.LSTM's equations, written out. A one-step nn.LSTM call costs about twice
    as much (its per-call weight and shape handling); its result differs in float rounding only (~1e-7). Used where
    the step's state is thrown away (scoring candidates); the states kept are nn.LSTM's, so that ``state_of`` and
    stepping stay bit-for-bit equal."""
    for layer in range(lstm.num_layers):
        gates = F.linear(x, getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"bias_ih_l{layer}"))
        gates = gates + F.linear(h[layer], getattr(lstm, f"weight_hh_l{layer}"), getattr(lstm, f"bias_hh_l{layer}"))
        i, f, g, o = gates.chunk(4, dim=-1)
        x = torch.sigmoid(o) * torch.tanh(torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g))
    return x


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
    cheap_step = True  # a step is one recurrent step per live window; scoring one more for all candidates

    def _embed_rows(self, ff: FeatureFrame, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed(to_device(Batcher(ff).batch(index), self.device))

    def _embed_all(self, ff: FeatureFrame, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``_embed_rows`` of every row of ``ff`` in order, as a (batch, time) = ``shape`` batch: the arrays viewed
        as tensors directly (the serving path's few rows; no padded copy of every column, no gather)."""
        batch = {k: torch.from_numpy(v).reshape(shape) for k, v in (*ff.cat.items(), *ff.resp.items())}
        batch["cont"] = torch.from_numpy(ff.cont).reshape(*shape, -1)
        return self.model.embed(to_device(batch, self.device))

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
        x, query = self._embed_rows(ff, target[:, None])
        prob = self._next(state, torch.from_numpy(job).to(self.device), x, query)
        result = np.full(len(ff), np.nan)
        result[target] = prob
        return result

    def _next(self, state: Recurrent, pick: torch.Tensor, x: torch.Tensor, query: torch.Tensor) -> np.ndarray:
        """P(correct) of each embedded row (``x``, ``query``: (rows, 1, ...)) as the step after ``state[:, pick]``."""
        out = lstm_step(self.model.lstm, x[:, 0], state[0][:, pick], state[1][:, pick])
        return torch.sigmoid(self.model.readout(out[:, None], query).float())[:, 0].cpu().numpy()

    # ------------------------------------------------------------ incremental form: the recurrent state

    def initial_state(self) -> LSTMState:
        return LSTMState()

    def step(self, state: LSTMState, answer: Mapping[str, Any]) -> LSTMState:
        return self.step_batch([state], [answer])[0]

    @torch.inference_mode()
    def step_batch(self, states: Sequence[LSTMState], answers: Sequence[Mapping[str, Any]]) -> list[LSTMState]:
        """Each state after its answer: the answers' rows embedded in one call, and every live window of every
        student stepped in one LSTM call (the windows as its batch; a window with no rows yet starts from zeros,
        as nn.LSTM does without a state)."""
        stepped = [s.features.after(self.encoder, a) for s, a in zip(states, answers, strict=True)]
        rows, feats = [r for r, _ in stepped], [f for _, f in stepped]
        x, _ = self._embed_all(stack_frames(rows), (len(rows), 1))
        live = []  # (student, window start, its state): windows before the next position's start are done with
        for i, (state, features) in enumerate(zip(states, feats, strict=True)):
            first = int(window_start(features.position, self.max_seq_len))
            live.extend((i, start, rec) for start, rec in state.windows if start >= first)
        windows: list[list[tuple[int, Recurrent | None]]] = [[] for _ in states]
        if live:
            zero = self.model.zero_state(1, self.device)
            h0 = torch.cat([(rec or zero)[0] for _, _, rec in live], dim=1)
            c0 = torch.cat([(rec or zero)[1] for _, _, rec in live], dim=1)
            pick = torch.tensor([i for i, _, _ in live], device=self.device)
            _, (h, c) = self.model.lstm(x[pick], (h0, c0))
            for w, (i, start, _) in enumerate(live):  # copies: a cached state must not pin the whole batch
                windows[i].append((start, (h[:, w : w + 1].clone(), c[:, w : w + 1].clone())))
        stride = eval_stride(self.max_seq_len)
        for i, features in enumerate(feats):
            if features.position % stride == 0:
                windows[i].append((features.position, None))
        return [LSTMState(features=f, windows=tuple(w)) for f, w in zip(feats, windows, strict=True)]

    @torch.inference_mode()
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

    def score(self, state: LSTMState, candidates: pd.DataFrame, at: pd.Timestamp | None = None) -> np.ndarray:
        return self.score_items(state, *candidate_columns(candidates), at)

    def score_items(
        self, state: LSTMState, items: list[str], tests: list[str], tags: list[int], at: pd.Timestamp | None = None
    ) -> np.ndarray:
        return self.score_items_batch([state], [(items, tests, tags, at)])[0]

    @torch.inference_mode()
    def score_items_batch(
        self, states: Sequence[LSTMState], candidates: Sequence[CandidateColumns]
    ) -> list[np.ndarray]:
        """Every student's candidates as the step after their state's first window: their rows embedded in one
        call, one LSTM step and one head call for all of them."""
        ffs = [s.features.encode_items(self.encoder, *c) for s, c in zip(states, candidates, strict=True)]
        sizes = [len(ff) for ff in ffs]
        if not sum(sizes):
            return [np.zeros(0) for _ in states]
        x, query = self._embed_all(stack_frames([ff for ff in ffs if len(ff)]), (sum(sizes), 1))
        zero = self.model.zero_state(1, self.device)
        h0 = torch.cat([(s.windows[0][1] or zero)[0] for s in states], dim=1)
        c0 = torch.cat([(s.windows[0][1] or zero)[1] for s in states], dim=1)
        pick = torch.from_numpy(np.repeat(np.arange(len(states)), sizes)).to(self.device)
        prob = self._next((h0, c0), pick, x, query)
        return np.split(prob, np.cumsum(sizes)[:-1])


@register
class LSTMKind(SequenceKind):
    name = "lstm"
    config_class = LSTMConfig
    module_class = LSTMModel
    predictor_class = LSTMPredictor
