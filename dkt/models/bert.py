"""A small BERT used as a causal (decoder-style) encoder over the interaction sequence.

``transformers.BertModel`` is built from a fresh ``BertConfig`` (nothing is
downloaded) and fed ``inputs_embeds``: a projection of [query; interaction] at
each position. BERT attends both ways by default, which would let position t
read later queries and answers; ``is_decoder=True`` makes every layer use a
causal mask instead (no cross-attention, no KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dkt.models.base import (
    InputConfig,
    InputEmbedding,
    LocalConv,
    PredictionHead,
    alibi_bias,
    attention_dropout,
    causal_mask,
    check_divisible,
    check_fractions,
    check_kernel,
    check_positions,
    check_positive_ints,
)
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind


@dataclass
class BertKTConfig(InputConfig):
    hidden_dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 2  # feed-forward width = ff_mult * hidden_dim
    dropout: float = 0.1
    # Dropout on the attention probabilities; None: ``dropout``. Its masks are drawn over (batch, heads, t, t), so
    # at 0 a training step costs 0.5-0.75x as much on the CPU (docs/sequence-models.md, round 8).
    attn_dropout: float | None = None
    max_positions: int = 512  # with positions "learned": must cover train.max_seq_len
    # "learned": BERT's position table from the window's start; "alibi": a recency bias on the attention
    # scores (dkt.models.base.alibi_bias); "none": the causal mask only
    positions: str = "learned"
    # The kernel of a causal depthwise convolution added to the tokens before the first layer (0: none): the last
    # few answers read exactly, in order (dkt.models.base.LocalConv)
    local_conv: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(
            self, ("d_model", "emb_dim", "hidden_dim", "n_layers", "n_heads", "ff_mult", "max_positions")
        )
        check_divisible(self, "hidden_dim")
        check_fractions(self)
        check_positions(self)
        check_kernel(self)


class BertKTModel(nn.Module):
    def __init__(self, cfg: BertKTConfig, sizes: dict[str, int]):
        super().__init__()
        self.max_positions = cfg.max_positions
        self.positions = cfg.positions
        self.n_heads = cfg.n_heads
        self.inp = InputEmbedding(cfg, sizes)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.hidden_dim)
        # Imported where a BERT is built: transformers costs 4.4 CPU-s of imports, and the registry imports this
        # file for every kind's lookup (the model list, a test run's collection), not only to build this one.
        from transformers import BertConfig, BertModel

        bert_cfg = BertConfig(
            vocab_size=1,  # inputs come as embeddings; the word table is never used
            hidden_size=cfg.hidden_dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.ff_mult * cfg.hidden_dim,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=attention_dropout(cfg),
            max_position_embeddings=cfg.max_positions,
            type_vocab_size=1,
            is_decoder=True,
            add_cross_attention=False,
            use_cache=False,
            attn_implementation="sdpa",
        )
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        self.conv = LocalConv(cfg.hidden_dim, cfg.local_conv) if cfg.local_conv else None
        self.head = PredictionHead(cfg.hidden_dim + cfg.d_model, cfg.dropout, mask=cfg.dropout_mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        b, t = batch["mask"].shape
        query, interaction = self.inp(batch)
        x = self.proj(torch.cat([query, interaction], dim=-1))
        if self.conv is not None:
            x = self.conv(x)
        if self.positions == "learned":
            if t > self.max_positions:
                raise ValueError(f"bert: sequence length {t} exceeds model_params.max_positions ({self.max_positions})")
            h = self.bert(inputs_embeds=x, attention_mask=batch["mask"].long(), use_cache=False).last_hidden_state
        else:
            # Every position gets table row 0 (a constant, so no order information from the table); order comes
            # from the causal mask alone ("none") or from the recency bias. A 4D float mask is used as given
            # (right padding: causal masking alone keeps padding out of every real position).
            zero = torch.zeros((b, t), dtype=torch.long, device=x.device)
            if self.positions == "alibi":
                bias = alibi_bias(self.n_heads, t, x.device)
            else:
                bias = torch.zeros((1, t, t), device=x.device).masked_fill(causal_mask(t, x.device), float("-inf"))
            h = self.bert(
                inputs_embeds=x, attention_mask=bias.to(x.dtype)[None], position_ids=zero, use_cache=False
            ).last_hidden_state
        return self.head(torch.cat([h, query], dim=-1))


@register
class BertKTKind(SequenceKind):
    name = "bert"
    config_class = BertKTConfig
    module_class = BertKTModel
