"""Experiment configuration (``config/<name>.json``), validated once when it is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dkt.bundle import read_json_file
from dkt.models import kind_class, model_names

P = TypeVar("P", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


def parse_model_params(model: type[P], kind: str, params: dict[str, Any]) -> P:
    """``model_params`` of a kind whose settings are a pydantic model (lgbm, ensemble): every bad key named, then the
    known ones, as one ``ConfigError``."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        lines = [f"model_params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        known = ", ".join(model.model_fields)
        raise ConfigError(f"{kind}: invalid model_params\n  " + "\n  ".join(lines) + f"\n  known: {known}") from None


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_seq_len: int = Field(200, ge=2, le=4096)
    window_stride: int | None = Field(None, ge=1, description="training window stride; default max_seq_len // 2")
    batch_size: int = Field(64, ge=1, description="training windows a batch (when batch_tokens is None)")
    eval_batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    epochs: int = Field(30, ge=1)
    patience: int = Field(4, ge=1, description="epochs without validation AUC gain before stopping")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    valid_ratio: float = Field(0.1, gt=0, lt=1, description="share of training users held out when no --valid-file")
    max_train_windows: int | None = Field(None, ge=1, description="cap on training windows per epoch (sampled)")
    bucket_batches: bool = Field(
        False, description="training batches of windows of similar length (less padding) instead of random ones"
    )
    batch_tokens: int | None = Field(
        None,
        ge=2,
        description="training batches of windows of like length, each as many as fit this many positions (windows x "
        "the longest one's length; at least max_seq_len), in random order: short windows go many to a batch, long "
        "ones few, so a step sees about as many answers whatever their length and little padding; None: batch_size "
        "windows a batch (random, or by length with bucket_batches)",
    )
    amp: bool = Field(True, description="mixed precision (autocast, GradScaler for fp16) when training on CUDA")
    cuda_graphs: bool = Field(
        False,
        description="on CUDA, replay each training step from a CUDA graph (batches padded to a few shapes): one "
        "launch a step instead of about 200, for models whose step is the host's time (dkt.cuda_graphs); not with "
        "fp16's loss scaling; the CPU ignores it",
    )
    ema_epochs: float | None = Field(
        None,
        gt=0,
        description="validate and keep a moving average of the weights (Polyak averaging) over about this many epochs "
        "of steps: an exponential average with decay 1 - 1 / (ema_epochs x steps per epoch); None: the weights as "
        "trained",
    )

    @model_validator(mode="after")
    def _stride(self) -> TrainParams:
        if self.window_stride is not None and self.window_stride > self.max_seq_len:
            raise ValueError(f"window_stride ({self.window_stride}) must not exceed max_seq_len ({self.max_seq_len})")
        if self.batch_tokens is not None and self.batch_tokens < self.max_seq_len:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be at least max_seq_len ({self.max_seq_len}): "
                "a batch holds at least one whole window"
            )
        return self

    @property
    def stride(self) -> int:
        return self.window_stride or max(1, self.max_seq_len // 2)


class EnsembleMember(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="path of the member's config, relative to this file's folder")
    weight: float = Field(1.0, gt=0)
    # Seeds of one config are members of their own: several seeds of one model are a stronger ensemble than one.
    seed: int | None = Field(None, ge=0, description="the member's training seed (default: the run's --seed)")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    train: TrainParams = Field(default_factory=TrainParams)
    members: list[EnsembleMember] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.model not in model_names():
            raise ValueError(f"unknown model {self.model!r}; known: {model_names()}")
        if self.model == "ensemble" and not self.members:
            raise ValueError("an ensemble needs at least one entry in 'members'")
        if self.model != "ensemble" and self.members:
            raise ValueError("'members' is only for model 'ensemble'")
        # Bad model_params fail here, naming the config file, not after the data is loaded.
        kind_class(self.model).check_params(self.model_params)
        return self


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    return parse_config(read_json_file(path, "config file", ConfigError), str(path))


def parse_config(raw: Any, source: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None
