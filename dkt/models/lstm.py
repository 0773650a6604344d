"""LSTM-DKT (Piech et al., 2015): a recurrent state of the student's knowledge.

At step t the LSTM reads the item asked at t together with the response given
at t-1, so its state after step t predicts the answer at t without seeing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dkt.models.base import InputConfig, InputEmbedding, PredictionHead


@dataclass
class LSTMConfig(InputConfig):
    hidden_dim: int = 128
    n_layers: int = 1
    dropout: float = 0.2


class LSTMModel(nn.Module):
    def __init__(self, cfg: LSTMConfig, sizes: dict[str, int]):
        super().__init__()
        self.inp = InputEmbedding(cfg, sizes)
        self.lstm = nn.LSTM(
            2 * cfg.d_model,
            cfg.hidden_dim,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )
        self.head = PredictionHead(cfg.hidden_dim + cfg.d_model, cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        query, interaction = self.inp(batch)
        h, _ = self.lstm(torch.cat([query, interaction], dim=-1))
        # The query again beside the state: the head compares "what is asked" with "what is known".
        return self.head(torch.cat([h, query], dim=-1))
