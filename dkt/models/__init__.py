"""Model registry: name in ``config/<name>.json`` -> (config dataclass, module class).

Sequence models are torch modules that share ``dkt.models.base.InputEmbedding``;
``lgbm`` and ``ensemble`` are not torch models and are trained by their own code
(see ``dkt.train``). A model's module is imported when that model is first used:
``bert`` pulls in transformers, which would add seconds to every serving replica's
start whatever model it serves.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from dkt.models.base import build_config

# name -> (module, config dataclass, model class)
TORCH_MODELS: dict[str, tuple[str, str, str]] = {
    "lstm": ("dkt.models.lstm", "LSTMConfig", "LSTMModel"),
    "lstmattn": ("dkt.models.lstmattn", "LSTMAttnConfig", "LSTMAttnModel"),
    "bert": ("dkt.models.bert", "BertKTConfig", "BertKTModel"),
    "saint": ("dkt.models.saint", "SaintConfig", "SaintModel"),
    "dkvmn": ("dkt.models.dkvmn", "DKVMNConfig", "DKVMNModel"),
}
OTHER_MODELS: tuple[str, ...] = ("lgbm", "ensemble")


def model_names() -> list[str]:
    return sorted([*TORCH_MODELS, *OTHER_MODELS])


def torch_model_classes(name: str) -> tuple[type, type[nn.Module]]:
    """(config dataclass, model class) of a sequence model, importing its module on first use."""
    if name not in TORCH_MODELS:
        raise ValueError(f"unknown sequence model {name!r}; known: {sorted(TORCH_MODELS)}")
    module, cfg_name, model_name = TORCH_MODELS[name]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, model_name)


def build_torch_model(name: str, params: dict[str, Any], sizes: dict[str, int]) -> nn.Module:
    cfg_cls, model_cls = torch_model_classes(name)
    return model_cls(build_config(cfg_cls, params), sizes)
