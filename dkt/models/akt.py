"""AKT (Ghosh et al., 2020, "Context-Aware Attentive Knowledge Tracing"): monotonic attention and Rasch embeddings.

Three parts, as in the paper:

- **Rasch embeddings.** A question is its skill's vector plus the item's difficulty (one scalar) times the
  skill's variation vector: x = c_skill + mu_item * d_skill, so items of one skill differ by one learned
  number instead of a full embedding each. An interaction is embedded the same way from its (skill, answer)
  token: y = e_(skill, answer) + mu_item * f_(skill, answer). The project's own features (``InputEmbedding``:
  item, test, timing, running accuracies) are added to both, so AKT reads what every other kind reads.
- **Monotonic attention.** Attention scores decay exponentially with the "context-aware distance" between
  two positions: how far apart they are, weighted by how much attention the positions in between draw.
  Each head learns its own decay rate (theta, kept positive by a softplus).
- **Question encoder, knowledge encoder, knowledge retriever.** Self-attention over questions and over
  interactions, then the current question attends over past questions (keys) to read past interactions
  (values).

Causality in this project's layout: the interaction at position s is the answer *before* s (to question
s-1; ``dkt.data.features``), so position t may attend to every s <= t. The retriever's key for the value at
s must be question s-1, not s: ``AttentionBlock(shift_keys=True)`` moves the keys one step right, with a
learned start vector at the window's first position (whose value is the answer before the window). The
previous item's difficulty comes from the ``prev_item_resp`` token itself (``previous_ids``).

``dkt.models.simplekt`` reuses ``RaschEmbedding`` and ``AttentionBlock`` (with plain attention).
Incremental form: the window of encoded rows as state (``dkt.models.sequence``), as the other attention kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dkt.data.features import FIRST, PAD
from dkt.models.base import (
    InputConfig,
    InputEmbedding,
    PredictionHead,
    check_divisible,
    check_fractions,
    check_positive_ints,
)
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind


@dataclass
class AKTConfig(InputConfig):
    n_blocks: int = 1  # knowledge-encoder layers; question encoder and retriever get as many each
    n_heads: int = 4
    ff_mult: int = 2  # feed-forward width = ff_mult * d_model
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_positive_ints(self, ("d_model", "emb_dim", "n_blocks", "n_heads", "ff_mult"))
        check_divisible(self, "d_model")
        check_fractions(self)


def previous_ids(token: torch.Tensor) -> torch.Tensor:
    """The previous row's id from a (previous id, answer) token, ``FIRST + 2 * id + answer`` in
    ``FeatureEncoder.transform``; PAD where there was no previous (known) answer."""
    return torch.where(token >= FIRST, torch.div(token - FIRST, 2, rounding_mode="floor"), PAD)


class RaschEmbedding(nn.Module):
    """(question, interaction) embeddings per position, Rasch-style: a skill vector plus the item's difficulty
    scalar times a variation vector; each plus the project's ``InputEmbedding`` of the same position."""

    def __init__(self, cfg: InputConfig, sizes: dict[str, int]):
        super().__init__()
        d_model = cfg.d_model
        self.inp = InputEmbedding(cfg, sizes)
        self.skill = nn.Embedding(sizes["tag"], d_model, padding_idx=PAD)
        self.skill_var = nn.Embedding(sizes["tag"], d_model, padding_idx=PAD)
        self.response = nn.Embedding(sizes["prev_tag_resp"], d_model, padding_idx=PAD)
        self.response_var = nn.Embedding(sizes["prev_tag_resp"], d_model, padding_idx=PAD)
        self.difficulty = nn.Embedding(sizes["item"], 1, padding_idx=PAD)
        # The paper starts every item at difficulty 0: an item is its skill until the data says otherwise.
        nn.init.zeros_(self.difficulty.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tag, resp = batch["tag"], batch["prev_tag_resp"]
        question = self.skill(tag) + self.difficulty(batch["item"]) * self.skill_var(tag)
        prev_mu = self.difficulty(previous_ids(batch["prev_item_resp"]))
        interaction = self.response(resp) + prev_mu * self.response_var(resp)
        query, inp_interaction = self.inp(batch)
        return query + question, inp_interaction + interaction


def monotonic_scores(scores: torch.Tensor, allowed: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """AKT's attention scores (B, H, T, S) scaled by exp(-softplus(theta) * context-aware distance).

    The distance of key s from query t is sqrt(|t - s| * the attention the keys after s, up to t, draw):
    computed from the plain attention without gradient, as in the paper's code.
    """
    t, s = scores.shape[-2:]
    with torch.no_grad():
        attn = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        after = attn.sum(dim=-1, keepdim=True) - attn.cumsum(dim=-1)  # attention on keys s' in (s, t]
        rows = torch.arange(t, device=scores.device)[:, None]
        cols = torch.arange(s, device=scores.device)[None, :]
        distance = (after * (rows - cols).abs()).clamp(min=0.0).sqrt()
    decay = -F.softplus(theta).view(1, -1, 1, 1)
    return scores * (distance * decay).exp().clamp(min=1e-5, max=1e5)


class AttentionBlock(nn.Module):
    """Attention (queries and keys share one projection, as in AKT and simpleKT), residual and LayerNorm,
    then optionally a feed-forward layer; ``monotonic`` picks AKT's decayed attention over plain scaled
    dot-product attention. Every query t sees keys s <= t only."""

    def __init__(self, cfg: AKTConfig, monotonic: bool, shift_keys: bool = False, feed_forward: bool = True) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.monotonic, self.dropout = cfg.n_heads, monotonic, cfg.dropout
        self.qk = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.theta = nn.Parameter(torch.zeros(cfg.n_heads)) if monotonic else None
        self.start = nn.Parameter(torch.zeros(1, 1, d)) if shift_keys else None
        self.norm1 = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.ff = (
            nn.Sequential(
                nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ff_mult * d, d)
            )
            if feed_forward
            else None
        )
        self.norm2 = nn.LayerNorm(d) if feed_forward else None

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        b, t, d = query.shape
        if self.start is not None:  # the key of value s is question s-1 (see the module docstring)
            key = torch.cat([self.start.expand(b, 1, d), key[:, :-1]], dim=1)
        q, k, v = self.heads(self.qk(query)), self.heads(self.qk(key)), self.heads(self.v(value))
        p = self.dropout if self.training else 0.0
        if self.theta is None:
            h = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            allowed = torch.ones(t, t, dtype=torch.bool, device=query.device).tril()
            scores = monotonic_scores(q @ k.transpose(-2, -1) / math.sqrt(d // self.n_heads), allowed, self.theta)
            attn = F.dropout(torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1), p)
            h = attn @ v
        x = self.norm1(query + self.drop(self.out(h.transpose(1, 2).reshape(b, t, d))))
        if self.ff is not None and self.norm2 is not None:
            x = self.norm2(x + self.drop(self.ff(x)))
        return x


class AKTModel(nn.Module):
    def __init__(self, cfg: AKTConfig, sizes: dict[str, int]):
        super().__init__()
        self.embed = RaschEmbedding(cfg, sizes)
        n = range(cfg.n_blocks)
        self.knowledge = nn.ModuleList(AttentionBlock(cfg, monotonic=True) for _ in n)
        # As in the paper's code: the question encoder's layers skip the feed-forward part.
        self.questions = nn.ModuleList(AttentionBlock(cfg, monotonic=True, feed_forward=False) for _ in n)
        self.retriever = nn.ModuleList(AttentionBlock(cfg, monotonic=True, shift_keys=True) for _ in n)
        self.head = PredictionHead(2 * cfg.d_model, cfg.dropout, mask=cfg.dropout_mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x_emb, y = self.embed(batch)
        x = x_emb
        # Right padding: with causal attention no real position ever attends to a padded one.
        for block in self.knowledge:
            y = block(y, y, y)
        for question, retrieve in zip(self.questions, self.retriever, strict=True):
            x = question(x, x, x)
            x = retrieve(x, x, y)
        return self.head(torch.cat([x, x_emb], dim=-1))


@register
class AKTKind(SequenceKind):
    name = "akt"
    config_class = AKTConfig
    module_class = AKTModel
