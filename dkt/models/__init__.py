"""Model registry: name in ``config/<name>.json`` -> (config dataclass, module class).

Sequence models are torch modules that share ``dkt.models.base.InputEmbedding``;
``lgbm`` and ``ensemble`` are not torch models and are trained by their own code
(see ``dkt.train``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dkt.models.base import build_config
from dkt.models.bert import BertKTConfig, BertKTModel
from dkt.models.dkvmn import DKVMNConfig, DKVMNModel
from dkt.models.lstm import LSTMConfig, LSTMModel
from dkt.models.lstmattn import LSTMAttnConfig, LSTMAttnModel
from dkt.models.saint import SaintConfig, SaintModel

TORCH_MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "lstm": (LSTMConfig, LSTMModel),
    "lstmattn": (LSTMAttnConfig, LSTMAttnModel),
    "bert": (BertKTConfig, BertKTModel),
    "saint": (SaintConfig, SaintModel),
    "dkvmn": (DKVMNConfig, DKVMNModel),
}
OTHER_MODELS: tuple[str, ...] = ("lgbm", "ensemble")


def model_names() -> list[str]:
    return sorted([*TORCH_MODELS, *OTHER_MODELS])


def build_torch_model(name: str, params: dict[str, Any], sizes: dict[str, int]) -> nn.Module:
    if name not in TORCH_MODELS:
        raise ValueError(f"unknown sequence model {name!r}; known: {sorted(TORCH_MODELS)}")
    cfg_cls, model_cls = TORCH_MODELS[name]
    return model_cls(build_config(cfg_cls, params), sizes)
