"""simpleKT (Liu et al., 2023, pyKT's "simple but tough-to-beat baseline"): Rasch embeddings and a plain
causal transformer.

AKT without its extras: no question or knowledge encoder and no monotonic decay. Questions and interactions
are embedded as in AKT (``dkt.models.akt.RaschEmbedding``, plus this project's ``InputEmbedding``), fixed
sinusoidal positions are added to both, and ``n_blocks`` layers of scaled dot-product attention let the
current question attend over past questions (keys) to read past interactions (values). The prediction reads
the retrieved knowledge state beside the question's own embedding.

Causality is AKT's: the value at s is the answer before s, its key is question s-1
(``AttentionBlock(shift_keys=True)``), and query t sees keys s <= t only. Positions count from the window's
start, the same offline and online, so no position table bounds the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dkt.models.akt import AKTConfig, AttentionBlock, RaschEmbedding
from dkt.models.base import PredictionHead
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind


@dataclass
class SimpleKTConfig(AKTConfig):
    n_blocks: int = 2  # attention layers


def sinusoidal_positions(t: int, d: int, device: torch.device) -> torch.Tensor:
    """(t, d) fixed positions (Vaswani et al. 2017), computed for any length."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    out = torch.zeros(t, d, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out


class SimpleKTModel(nn.Module):
    def __init__(self, cfg: SimpleKTConfig, sizes: dict[str, int]):
        super().__init__()
        self.embed = RaschEmbedding(cfg, sizes)
        self.blocks = nn.ModuleList(AttentionBlock(cfg, monotonic=False, shift_keys=True) for _ in range(cfg.n_blocks))
        self.head = PredictionHead(2 * cfg.d_model, cfg.dropout, mask=cfg.dropout_mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x_emb, y = self.embed(batch)
        pos = sinusoidal_positions(x_emb.shape[1], x_emb.shape[2], x_emb.device)
        x, y = x_emb + pos, y + pos
        # Right padding: with causal attention no real position ever attends to a padded one.
        for block in self.blocks:
            x = block(x, x, y)
        return self.head(torch.cat([x, x_emb], dim=-1))


@register
class SimpleKTKind(SequenceKind):
    name = "simplekt"
    config_class = SimpleKTConfig
    module_class = SimpleKTModel
