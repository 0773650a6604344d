"""What every sequence model shares: hyper-parameters of the input, the input embedding, the prediction head.

The output contract: ``model(batch)`` returns logits of shape (batch, time), one
per position, where position t depends only on the batch's features at
positions <= t. Features at t carry the answers *before* t (see
``dkt.data.features``), so a causal model never sees the answer it predicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dkt.data.features import CATEGORICAL, CONTINUOUS, PAD, RESPONSE
from dkt.data.order import ORDER_INPUTS


@dataclass
class InputConfig:
    d_model: int = 128  # width of the query / interaction vectors handed to the model body
    emb_dim: int = 32  # width of each categorical embedding before projection
    emb_dropout: float = 0.1
    categorical: tuple[str, ...] = CATEGORICAL
    response: tuple[str, ...] = RESPONSE
    use_continuous: bool = True
    # Also read the order of the answers before (dkt.data.order: per skill the last three answers, streak, gap and
    # decayed accuracy; per student the streak and decayed accuracy), eight more continuous inputs. Off by default:
    # bundles trained before them read the first five columns, as they were trained.
    order_inputs: bool = False
    # How the features become the two vectors: "concat" (each feature emb_dim wide, concatenated, dropout, projected
    # to d_model) or "sum" (each feature d_model wide, summed, dropout; emb_dim unused). A projection of a
    # concatenation is a sum of per-feature maps, so "sum" learns the same kind of function without the wide
    # concatenation, its dropout masks and the two projections (docs/training-speed.md).
    embedding: str = "concat"
    # Dropout masks: "element" draws one per element (nn.Dropout); "sequence" one per sequence and feature, the
    # same at every time step (variational dropout, Gal & Ghahramani 2016): a (batch, time, width) tensor needs
    # batch x width random draws instead of batch x time x width. The draws were 12% of an lstm training step
    # (docs/training-speed.md). Training only: evaluation and serving apply no dropout either way.
    dropout_mask: str = "element"


def check_positive_ints(cfg: Any, names: tuple[str, ...]) -> None:
    """Raise a ValueError naming the config class and field unless each field is an integer >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")


def check_fractions(cfg: Any, names: tuple[str, ...] | None = None) -> None:
    """Raise a ValueError naming the config class and field unless each field is a number in [0, 1) (``names``
    default: dropout and emb_dropout, and attn_dropout where the config has it and sets it)."""
    if names is None:
        names = ("dropout", "emb_dropout")
        if getattr(cfg, "attn_dropout", None) is not None:
            names += ("attn_dropout",)
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be in [0, 1), got {value!r}")


def check_divisible(cfg: Any, name: str, by: str = "n_heads") -> None:
    """Raise a ValueError naming the config class unless field ``name`` splits evenly over ``by`` (heads)."""
    value, parts = getattr(cfg, name), getattr(cfg, by)
    if value % parts:
        raise ValueError(f"{type(cfg).__name__}: {name} ({value}) must be divisible by {by} ({parts})")


def input_lstm(cfg: Any, input_size: int | None = None) -> nn.LSTM:
    """The LSTM over the embedded (query, interaction) pairs that lstm and lstmattn both start with (``input_size``:
    default both side by side, 2 * d_model)."""
    return nn.LSTM(
        input_size or 2 * cfg.d_model,
        cfg.hidden_dim,
        num_layers=cfg.n_layers,
        batch_first=True,
        dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
    )


EMBEDDINGS = ("concat", "sum")
DROPOUT_MASKS = ("element", "sequence")


def build_config(cls: type, params: dict[str, Any]) -> Any:
    """Make a model config dataclass from JSON params, naming any unknown or bad key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown parameter(s) {unknown}; known: {sorted(names)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    for k in ("categorical", "response"):
        if k in params and (bad := set(params[k]) - set(getattr(InputConfig, k))):
            raise ValueError(f"{cls.__name__}.{k}: unknown feature(s) {sorted(bad)}")
    # Every true/false field of the config (InputConfig's and the kind's own): JSON's 1 or "yes" is not a switch.
    switches = [f.name for f in dataclasses.fields(cls) if f.type in (bool, "bool")]
    for name in switches:
        if name in params and not isinstance(params[name], bool):
            raise ValueError(f"{cls.__name__}.{name} must be true or false, got {params[name]!r}")
    for name, choices in (("embedding", EMBEDDINGS), ("dropout_mask", DROPOUT_MASKS)):  # each default is choices[0]
        if params.get(name, choices[0]) not in choices:
            raise ValueError(f"{cls.__name__}.{name} must be one of {choices}, got {params[name]!r}")
    return cls(**params)


class SequenceDropout(nn.Module):
    """Dropout whose mask is drawn once per sequence and feature and shared by every time step of a
    (batch, time, ...) tensor (``InputConfig.dropout_mask`` "sequence"); identity in evaluation."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = (x.shape[0], 1, *x.shape[2:])
        return x * x.new_empty(shape).bernoulli_(1.0 - self.p).div_(1.0 - self.p)


def dropout(p: float, mask: str = "element") -> nn.Module:
    """The dropout layer ``InputConfig.dropout_mask`` names."""
    return SequenceDropout(p) if mask == "sequence" else nn.Dropout(p)


def attention_dropout(cfg: Any) -> float:
    """The dropout on a config's attention probabilities: its ``attn_dropout``, or ``dropout`` where that is unset."""
    return cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout


class InputEmbedding(nn.Module):
    """Turns a batch into two (B, T, d_model) tensors.

    ``query``: what is asked at t (item, skill, test, timing, running accuracy);
    ``interaction``: the response before t (previous answer with its skill and item).
    """

    def __init__(self, cfg: InputConfig, sizes: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        summed = cfg.embedding == "sum"
        width = cfg.d_model if summed else cfg.emb_dim
        self.cat = nn.ModuleDict({k: nn.Embedding(sizes[k], width, padding_idx=0) for k in cfg.categorical})
        self.resp = nn.ModuleDict({k: nn.Embedding(sizes[k], width, padding_idx=0) for k in cfg.response})
        n_cont = len(CONTINUOUS) + (len(ORDER_INPUTS) if cfg.order_inputs else 0) if cfg.use_continuous else 0
        self.n_cont = n_cont  # the leading columns of ``batch["cont"]`` this model reads
        if summed:
            self.cont_proj = nn.Linear(n_cont, cfg.d_model) if n_cont else None
        else:
            self.query_proj = nn.Linear(len(cfg.categorical) * cfg.emb_dim + n_cont, cfg.d_model)
            self.inter_proj = nn.Linear(len(cfg.response) * cfg.emb_dim, cfg.d_model)
        self.drop = dropout(cfg.emb_dropout, cfg.dropout_mask)
        self._offsets: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # summed_in_one_gather's, per device

    # Whether the "sum" embedding looks every feature up in one gather (``summed_in_one_gather``); None: on CUDA.
    # bench/op_count_bench.py sets it to count a CUDA step's launches on the CPU.
    one_gather: bool | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.embedding == "sum":
            one = self.one_gather if self.one_gather is not None else batch[self.cfg.categorical[0]].is_cuda
            query, interaction = self.summed_in_one_gather(batch) if one else self.summed(batch)
            if self.cont_proj is not None:
                query = query + self.cont_proj(batch["cont"][..., : self.n_cont])
            return self.drop(query), self.drop(interaction)
        q = [self.cat[k](batch[k]) for k in self.cfg.categorical]
        r = [self.resp[k](batch[k]) for k in self.cfg.response]
        if self.cfg.use_continuous:
            q.append(batch["cont"][..., : self.n_cont])
        query = self.query_proj(self.drop(torch.cat(q, dim=-1)))
        interaction = self.inter_proj(self.drop(torch.cat(r, dim=-1)))
        return query, interaction

    def summed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums of the categorical features' rows and of the response features' rows, a table at a time."""
        q = [self.cat[k](batch[k]) for k in self.cfg.categorical]
        r = [self.resp[k](batch[k]) for k in self.cfg.response]
        return sum(q[1:], q[0]), sum(r[1:], r[0])

    def summed_in_one_gather(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``summed`` in one gather: the tables side by side, each feature's ids moved past the tables before it, and
        two bags a position (its categorical rows, its response rows) summed as they are gathered.

        Ten lookups and their backward passes are 20 launches a step, and on CUDA an embedding's backward is several
        kernels; this is one gather, one scatter and a copy of the tables. On the CPU the copy and embedding_bag's
        backward cost more than they save once the tables are large (docs/training-speed.md, round 7), so the CPU
        keeps ``summed``. A padded position's id is PAD in every table; it becomes row 0 of the joined table (the first
        table's padding row, zero and never trained, as each table's own is), so no padding row gets a gradient. The
        sums are taken in ``summed``'s order: the same numbers (tests/dkt/models/test_lstm.py)."""
        features = (*self.cfg.categorical, *self.cfg.response)
        tables = [*self.cat.values(), *self.resp.values()]
        ids = torch.stack([batch[k] for k in features], dim=-1)
        starts, bag_starts = self.offsets(ids.device)
        rows = (ids + starts) * (ids != PAD)
        b, t, n = rows.shape
        bags = torch.arange(0, b * t * n, n, device=rows.device)[:, None] + bag_starts
        joined = torch.cat([table.weight for table in tables])
        sums = F.embedding_bag(rows.flatten(), joined, bags.flatten(), mode="sum", padding_idx=PAD)
        query, interaction = sums.view(b, t, 2, -1).unbind(-2)
        return query, interaction

    def offsets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(each table's first row in the joined table, each bag's first id within a position's ids), made on ``device``
        once: a tensor built from host numbers at every step would be a blocking copy to the GPU, a wait per step."""
        if device not in self._offsets:
            sizes = [table.num_embeddings for table in (*self.cat.values(), *self.resp.values())]
            starts = torch.tensor([0, *sizes[:-1]]).cumsum(0).to(device)
            self._offsets[device] = starts, torch.tensor([0, len(self.cat)]).to(device)
        return self._offsets[device]


def causal_mask(t: int, device: torch.device) -> torch.Tensor:
    """Boolean (t, t) mask, True where attention is *forbidden* (the future)."""
    return torch.triu(torch.ones(t, t, dtype=torch.bool, device=device), diagonal=1)


POSITIONS = ("learned", "none", "alibi")


def check_positions(cfg: Any) -> None:
    """Raise a ValueError naming the config class unless ``cfg.positions`` is one of ``POSITIONS``."""
    if cfg.positions not in POSITIONS:
        raise ValueError(f"{type(cfg).__name__}.positions must be one of {POSITIONS}, got {cfg.positions!r}")


def alibi_bias(n_heads: int, t: int, device: torch.device) -> torch.Tensor:
    """Causal attention bias with linear recency (ALiBi, Press et al. 2022): (n_heads, t, t) floats, ``-inf``
    on the future and ``-slope_h * (i - j)`` on the past, slopes 2^(-8(h+1)/n_heads) (head 0 the most local).

    It depends on distances only, so a position scores the same wherever its window starts, and no table
    bounds the window's length."""
    slopes = torch.pow(2.0, -8.0 * torch.arange(1, n_heads + 1, device=device) / n_heads)
    pos = torch.arange(t, device=device)
    dist = (pos[:, None] - pos[None, :]).float()
    bias = -slopes[:, None, None] * dist
    return bias.masked_fill(dist < 0, float("-inf"))


def check_kernel(cfg: Any, name: str = "local_conv") -> None:
    """Raise a ValueError naming the config class and field unless it is an integer >= 0 (0: no convolution)."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{type(cfg).__name__}.{name} must be an integer >= 0 (0: none), got {value!r}")


class LocalConv(nn.Module):
    """x plus a causal depthwise convolution of x over time (``model_params.local_conv``, bert and saint).

    Position t reads itself and the ``kernel - 1`` positions before it, each by its own weight: "the last three
    answers, in order" exactly. An attention with a recency bias can only weigh the last tokens by content (ALiBi's
    most local head scores the previous token 0.25 above the one before it), so without this the transformers had
    no sharp view of the latest answers that an LSTM's state has (docs/sequence-models.md, round 12).
    """

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(width, width, kernel, groups=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, time, width); padded on the left only, so no position reads a later one.
        return x + self.conv(nn.functional.pad(x.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)


class PredictionHead(nn.Module):
    def __init__(self, d_in: int, p: float, hidden: int | None = None, mask: str = "element"):
        super().__init__()
        hidden = hidden or d_in
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), dropout(p, mask), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
