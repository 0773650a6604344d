"""LSTM + causal self-attention: a recurrent state refined by looking back over the whole window.

The LSTM summarises the history step by step (as in ``dkt.models.lstm``); a
pre-norm transformer layer on top lets position t attend to any earlier state,
so an answer from long ago on the same skill can weigh in directly instead of
surviving only through the recurrent state. The causal mask keeps position t
from seeing states after t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dkt.models.base import (
    InputConfig,
    InputEmbedding,
    PredictionHead,
    causal_mask,
    check_divisible,
    check_fractions,
    check_positive_ints,
    input_lstm,
)
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind


@dataclass
class LSTMAttnConfig(InputConfig):
    hidden_dim: int = 128
    n_layers: int = 1  # LSTM layers
    n_attn_layers: int = 1
    n_heads: int = 4
    dropout: float = 0.2

    def __post_init__(self) -> None:
        check_positive_ints(self, ("d_model", "emb_dim", "hidden_dim", "n_layers", "n_attn_layers", "n_heads"))
        check_divisible(self, "hidden_dim")
        check_fractions(self)


class LSTMAttnModel(nn.Module):
    def __init__(self, cfg: LSTMAttnConfig, sizes: dict[str, int]):
        super().__init__()
        self.inp = InputEmbedding(cfg, sizes)
        self.lstm = input_lstm(cfg)
        self.attn = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.hidden_dim,
                cfg.n_heads,
                dim_feedforward=2 * cfg.hidden_dim,
                dropout=cfg.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.n_attn_layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.head = PredictionHead(cfg.hidden_dim + cfg.d_model, cfg.dropout, mask=cfg.dropout_mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        query, interaction = self.inp(batch)
        h, _ = self.lstm(torch.cat([query, interaction], dim=-1))
        # Padding is on the right, so the causal mask alone keeps it out of every real position.
        mask = causal_mask(h.shape[1], h.device)
        for layer in self.attn:
            h = layer(h, src_mask=mask, is_causal=True)
        return self.head(torch.cat([self.norm(h), query], dim=-1))


@register
class LSTMAttnKind(SequenceKind):
    name = "lstmattn"
    config_class = LSTMAttnConfig
    module_class = LSTMAttnModel
