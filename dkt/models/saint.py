"""SAINT (Choi et al., 2020): an encoder over exercises, a decoder over responses.

The encoder reads the queries (what is asked at each step); the decoder reads
the interactions (the response before each step, so position 0 holds a start
token) and attends to the encoded exercises. Every attention is causal:
encoder self-attention, decoder self-attention and decoder-to-encoder
attention, so position t uses exercises <= t and responses < t only.

With ``decoder_query`` the decoder's input at t also holds the exercise asked at t: with one decoder layer (the
shipped config) its self-attention can then weigh the past responses by that exercise, which the paper's form leaves
to the cross-attention after it (docs/sequence-models.md, round 11).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dkt.models.base import (
    InputConfig,
    InputEmbedding,
    LocalConv,
    PredictionHead,
    alibi_bias,
    attention_dropout,
    check_divisible,
    check_fractions,
    check_kernel,
    check_positions,
    check_positive_ints,
)
from dkt.models.interface import register
from dkt.models.sequence import SequenceKind


@dataclass
class SaintConfig(InputConfig):
    n_enc_layers: int = 2
    n_dec_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 2  # feed-forward width = ff_mult * d_model
    dropout: float = 0.1
    # Dropout on the attention probabilities (every attention); None: ``dropout`` (as bert's: its masks are drawn
    # over (batch, heads, t, t), the costly part of a step on the CPU)
    attn_dropout: float | None = None
    max_positions: int = 512  # with positions "learned": must cover train.max_seq_len
    # "learned": a position table from the window's start (the paper); "alibi": a recency bias on every
    # attention's scores (dkt.models.base.alibi_bias); "none": causal masks only
    positions: str = "learned"
    # The decoder's input: the responses before each step (the paper), and with this also what is asked at it, so
    # its self-attention compares the asked item with the answered ones directly, not only through the encoder.
    decoder_query: bool = False
    # The kernel of a causal depthwise convolution added to the encoder's and to the decoder's input (0: none): the
    # last few exercises and answers read exactly, in order (dkt.models.base.LocalConv)
    local_conv: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(
            self, ("d_model", "emb_dim", "n_enc_layers", "n_dec_layers", "n_heads", "ff_mult", "max_positions")
        )
        check_divisible(self, "d_model")
        check_fractions(self)
        check_positions(self)
        check_kernel(self)


def attend(
    attn: nn.MultiheadAttention, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``attn``'s weights (as ``nn.MultiheadAttention`` holds them) from ``x`` over ``memory``: causal, through
    ``bias`` (heads, t, t) when given (ALiBi: ``alibi_bias``, -inf on the future).

    ``nn.MultiheadAttention`` takes a per-head mask only as (batch x heads, t, t), so until round 13 saint repeated the
    bias for every window of the batch and each attention read all of it; here one copy is broadcast over the batch.
    A training step is 1.25x faster for it at width 64 and 1.05x at the shipped width 96, where the matrix products
    dominate (``bench/step_bench.py --model saint --torch-layers``), with the numbers of the layers' own forward
    (within 1e-5: tests/dkt/models/test_sequence_models.py), so the bundles trained before score as they did."""
    b, t, d = x.shape
    h = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def heads(y: torch.Tensor) -> torch.Tensor:
        return y.view(b, t, h, d // h).transpose(1, 2)

    q, k, v = heads(F.linear(x, w_q, b_q)), heads(F.linear(memory, w_k, b_k)), heads(F.linear(memory, w_v, b_v))
    dropout = attn.dropout if attn.training else 0.0
    if bias is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype)[None], dropout_p=dropout)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, d))


def feed_forward(layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
    return layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``layer``'s pre-norm forward (``norm_first``), its attention through ``attend``."""
    y = layer.norm1(x)
    x = x + layer.dropout1(attend(layer.self_attn, y, y, bias))
    return x + layer.dropout2(feed_forward(layer, layer.norm2(x)))


def decoder_layer(
    layer: nn.TransformerDecoderLayer, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``layer``'s pre-norm forward: causal self-attention, then causal attention to the encoded exercises."""
    y = layer.norm1(x)
    x = x + layer.dropout1(attend(layer.self_attn, y, y, bias))
    x = x + layer.dropout2(attend(layer.multihead_attn, layer.norm2(x), memory, bias))
    return x + layer.dropout3(feed_forward(layer, layer.norm3(x)))


class SaintModel(nn.Module):
    """torch's encoder and decoder layers hold the weights (their names are the bundles' state-dict keys);
    ``encoder_layer`` and ``decoder_layer`` run them."""

    def __init__(self, cfg: SaintConfig, sizes: dict[str, int]):
        super().__init__()
        self.max_positions = cfg.max_positions
        self.positions = cfg.positions
        self.n_heads = cfg.n_heads
        self.decoder_query = cfg.decoder_query
        self.inp = InputEmbedding(cfg, sizes)
        if cfg.positions == "learned":
            self.enc_pos = nn.Embedding(cfg.max_positions, cfg.d_model)
            self.dec_pos = nn.Embedding(cfg.max_positions, cfg.d_model)
        common = {
            "d_model": cfg.d_model,
            "nhead": cfg.n_heads,
            "dim_feedforward": cfg.ff_mult * cfg.d_model,
            "dropout": cfg.dropout,
            "activation": "gelu",
            "batch_first": True,
            "norm_first": True,
        }
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(**common) for _ in range(cfg.n_enc_layers))
        self.enc_norm = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(nn.TransformerDecoderLayer(**common) for _ in range(cfg.n_dec_layers))
        self.dec_norm = nn.LayerNorm(cfg.d_model)
        # The layers take one dropout for everything; nn.MultiheadAttention reads its own at each call, so the
        # attentions get attention_dropout's while the feed-forward and residual dropouts keep ``dropout``.
        for layer in (*self.encoder, *self.decoder):
            layer.self_attn.dropout = attention_dropout(cfg)
            if isinstance(layer, nn.TransformerDecoderLayer):
                layer.multihead_attn.dropout = attention_dropout(cfg)
        self.head = PredictionHead(2 * cfg.d_model, cfg.dropout, mask=cfg.dropout_mask)
        # (encoder, decoder): each input gets its own
        self.convs = nn.ModuleList(LocalConv(cfg.d_model, cfg.local_conv) for _ in range(2)) if cfg.local_conv else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = batch["mask"].shape[1]
        query, interaction = self.inp(batch)
        enc, dec = query, (interaction + query if self.decoder_query else interaction)
        if self.convs is not None:
            enc, dec = self.convs[0](enc), self.convs[1](dec)
        # Right padding: with causal attention no real position ever attends to a padded one.
        bias = alibi_bias(self.n_heads, t, query.device) if self.positions == "alibi" else None
        if self.positions == "learned":
            if t > self.max_positions:
                raise ValueError(
                    f"saint: sequence length {t} exceeds model_params.max_positions ({self.max_positions})"
                )
            pos = torch.arange(t, device=query.device)
            enc, dec = enc + self.enc_pos(pos), dec + self.dec_pos(pos)
        for layer in self.encoder:
            enc = encoder_layer(layer, enc, bias)
        enc = self.enc_norm(enc)
        for layer in self.decoder:
            dec = decoder_layer(layer, dec, enc, bias)
        return self.head(torch.cat([self.dec_norm(dec), query], dim=-1))


@register
class SaintKind(SequenceKind):
    name = "saint"
    config_class = SaintConfig
    module_class = SaintModel
