"""DKVMN (Zhang et al., 2017): a key memory of latent concepts and a per-student value memory of their mastery.

Each query is addressed softly over ``memory_size`` concept slots (the static
key memory). The value memory starts from a learned state for every sequence
and is rewritten after each answer: an erase vector and an add vector, computed
from the response, are applied to the slots the answered item addressed.

Timing: the interaction at t is the response *before* t, so step t first
writes interaction t with the address of query t-1 and then reads with query t.
That is the paper's "write response t-1 after predicting t-1", and it keeps
position t from seeing its own answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dkt.models.base import InputConfig, InputEmbedding, PredictionHead, check_fractions, check_positive_ints
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind


@dataclass
class DKVMNConfig(InputConfig):
    memory_size: int = 16  # latent concept slots
    key_dim: int = 64
    value_dim: int = 64
    dropout: float = 0.2

    def __post_init__(self) -> None:
        check_positive_ints(self, ("d_model", "emb_dim", "memory_size", "key_dim", "value_dim"))
        check_fractions(self)


class DKVMNModel(nn.Module):
    def __init__(self, cfg: DKVMNConfig, sizes: dict[str, int]):
        super().__init__()
        self.inp = InputEmbedding(cfg, sizes)
        self.key_proj = nn.Linear(cfg.d_model, cfg.key_dim)
        self.key_memory = nn.Parameter(torch.randn(cfg.memory_size, cfg.key_dim) / cfg.key_dim**0.5)
        self.value_init = nn.Parameter(torch.randn(cfg.memory_size, cfg.value_dim) * 0.1)
        self.erase = nn.Linear(cfg.d_model, cfg.value_dim)
        self.add = nn.Linear(cfg.d_model, cfg.value_dim)
        self.head = PredictionHead(cfg.value_dim + cfg.d_model, cfg.dropout, mask=cfg.dropout_mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        query, interaction = self.inp(batch)
        b = query.shape[0]
        # Everything that does not depend on the memory is computed for all steps at once.
        read_w = torch.softmax(self.key_proj(query) @ self.key_memory.T, dim=-1)  # (B, T, N)
        write_w = torch.cat([torch.zeros_like(read_w[:, :1]), read_w[:, :-1]], dim=1)  # address of query t-1
        erase = torch.sigmoid(self.erase(interaction))  # (B, T, V)
        add = torch.tanh(self.add(interaction))
        memory = self.value_init.expand(b, -1, -1)
        reads = []
        # unbind, not indexing per step: the backward of t slices would allocate t full-size gradients.
        steps = zip(write_w.unbind(1), erase.unbind(1), add.unbind(1), read_w.unbind(1), strict=True)
        for w_write, e, a, w_read in steps:
            w = w_write.unsqueeze(-1)  # (B, N, 1)
            memory = memory * (1.0 - w * e.unsqueeze(1)) + w * a.unsqueeze(1)
            reads.append(torch.bmm(w_read.unsqueeze(1), memory).squeeze(1))
        read = torch.stack(reads, dim=1)  # (B, T, V)
        return self.head(torch.cat([read, query], dim=-1))


@register
class DKVMNKind(SequenceKind):
    name = "dkvmn"
    config_class = DKVMNConfig
    module_class = DKVMNModel
