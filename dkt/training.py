"""The training loop for sequence models: AdamW, warm-up + cosine LR, clipping, AMP, early stopping."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dkt.config import TrainParams
from dkt.cuda_graphs import GraphedStep, masked_loss, shape_classes
from dkt.data.features import FIRST, VOCAB_FEATURES, FeatureEncoder, FeatureFrame
from dkt.data.sequences import (
    Batcher,
    Windows,
    make_windows,
    scoring_windows,
    to_device,
    token_batches,
    window_lengths,
)
from dkt.metrics import auc
from dkt.scoring import autocast, score_windows


class TrainingError(RuntimeError):
    """Training ran but produced no usable model (e.g. every epoch's loss was NaN)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was asked for but torch sees no CUDA device")
    return torch.device(device)


def fused_adamw(device: torch.device) -> bool:
    """Whether the loop's AdamW is the fused one: on CUDA, where an epoch of this project's small models is mostly
    kernel launches (docs/training-speed.md), it updates every parameter in one. The CPU keeps torch's default, whose
    rounding every CPU figure in the docs was measured with (bench/op_count_bench.py counts a step as CUDA runs it)."""
    return device.type == "cuda"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class FitResult:
    best_epoch: int
    best_valid_auc: float  # NaN when undefined (one class in the validation labels)
    epochs_run: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    selected_by: str = "valid_auc"  # or "valid_loss" / "train_loss" when AUC cannot rank the epochs
    selection_reason: str = ""


def selection_metric(valid_y: np.ndarray) -> tuple[str, str]:
    """What ranks epochs, and why when it is not validation AUC (AUC needs both classes)."""
    classes = np.unique(valid_y)
    if len(classes) == 2:
        return "valid_auc", ""
    if len(classes) == 1:
        return "valid_loss", f"validation AUC is undefined (only one class in validation labels: all {int(classes[0])})"
    return "train_loss", "validation has no labelled answers"


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def epoch_auc(labels: list[torch.Tensor], probs: list[torch.Tensor], masks: list[torch.Tensor]) -> float:
    """AUC of an epoch's own predictions, batch by batch (tensors wherever they were computed: copied once here),
    over the positions ``masks`` keeps; NaN when undefined (one class, or a diverged epoch whose predictions are all
    NaN: those are left out, as the validation AUC leaves out unscored positions)."""
    keep = torch.cat(masks).cpu().numpy() if masks else np.empty(0, dtype=bool)
    y = torch.cat(labels).cpu().numpy()[keep] if labels else np.empty(0)
    p = torch.cat(probs).cpu().numpy()[keep] if probs else np.empty(0)
    finite = np.isfinite(p)
    return auc(y[finite], p[finite])


def by_length(windows: Windows) -> Windows:
    """``windows`` reordered longest first."""
    order = np.argsort(-window_lengths(windows), kind="stable")
    return Windows(windows.index[order], windows.score[order])


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit_sequence_model(
    model: nn.Module,
    train_ff: FeatureFrame,
    valid_ff: FeatureFrame,
    params: TrainParams,
    device: torch.device,
    seed: int,
    epochs: int | None = None,
    on_improve: Callable[[nn.Module, int, float], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` in place; it ends holding the weights of its best validation epoch.

    Epochs are ranked by validation AUC; when that is undefined (one class in the validation
    labels) by validation loss, and with no labelled validation answers by training loss (it says so).
    ``on_improve`` is called after each epoch that beats the best so far,
    so the caller can persist the weights at once: a crash later loses nothing.
    """
    epochs = epochs or params.epochs
    rng = np.random.default_rng(seed)
    model.to(device)
    train_b, valid_b = Batcher(train_ff, device), Batcher(valid_ff, device)
    train_w = make_windows(train_ff, params.max_seq_len, params.stride)
    # Validation is scored like the test set and the service (one window rule: dkt.data.sequences.window_start).
    # Scored longest first: an evaluation batch is as wide as its longest window, so windows of like length
    # together make batches with little padding. Each row's probability is the same in any order.
    valid_w = by_length(scoring_windows(valid_ff, params.max_seq_len))
    n_windows = min(len(train_w), params.max_train_windows or len(train_w))
    if params.batch_tokens is not None:
        # Token batches: the count depends on the windows' lengths only (all of them: an estimate when sampled).
        all_steps = len(token_batches(window_lengths(train_w), np.arange(len(train_w)), params.batch_tokens, None))
        steps_per_epoch = max(1, round(all_steps * n_windows / len(train_w)))
    else:
        steps_per_epoch = math.ceil(n_windows / params.batch_size)
    total = steps_per_epoch * epochs
    fused = {"fused": True} if fused_adamw(device) else {}
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, **fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, int(params.warmup_ratio * total)))
    amp = params.amp and device.type == "cuda"
    # bf16 has fp32's range: only fp16 needs the loss scaled so small gradients do not underflow.
    use_scaler = amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    # With ``ema_epochs`` the epochs are scored, kept and saved as a moving average of the weights (torch's
    # AveragedModel): an average over the last steps sits nearer the loss's minimum than any one step's weights, which
    # the noise of a small batch keeps moving (docs/sequence-models.md, round 9). Its span is set in epochs, not as a
    # decay per step: the same decay spans 4 epochs of STATICS 2011 (23 steps each) and a quarter of one of
    # ASSISTments 2015 (397), and a per-step 0.99 chosen on ASSISTments 2009 cost 0.003 AUC on STATICS.
    ema = None
    if params.ema_epochs is not None:
        decay = max(0.0, 1.0 - 1.0 / (params.ema_epochs * steps_per_epoch))
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    kept = model if ema is None else ema.module
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    graphed = None
    if params.cuda_graphs and device.type == "cuda" and not use_scaler:
        classes = shape_classes(window_lengths(train_w), params.max_seq_len, params.batch_size, params.batch_tokens)
        graphed = GraphedStep(model, opt, classes, loss_fn, params.grad_clip, amp)
    valid_y = np.clip(valid_ff.answer, 0, 1)
    criterion, reason = selection_metric(valid_y[valid_ff.answer >= 0])
    if reason:
        print(f"{reason}: selecting epochs by {criterion.replace('_', ' ')}", file=sys.stderr)

    best_score, best_auc, best_epoch, best_state, stale = -math.inf, float("nan"), 0, None, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    show = progress and sys.stderr.isatty()
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        tick = time.perf_counter()
        sub = train_w
        if n_windows < len(train_w):
            pick = rng.choice(len(train_w), n_windows, replace=False)
            sub = type(train_w)(train_w.index[pick], train_w.score[pick])
        # Summed on the device and read once per epoch: a .item() or .cpu() per step would wait for the GPU each step.
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        total_n = torch.zeros((), dtype=torch.int64, device=device)
        # The epoch's own predictions and their loss masks, for its train AUC: what the optimiser saw, as it changed
        # over the epoch (dropout on), not a second pass over the data after it. Masked once at the epoch's end: a
        # boolean index per step would wait for the GPU each step.
        seen_p: list[torch.Tensor] = []
        seen_y: list[torch.Tensor] = []
        seen_m: list[torch.Tensor] = []
        bar = tqdm(
            train_b.iterate(
                sub,
                params.batch_size,
                shuffle=True,
                rng=rng,
                bucket=params.bucket_batches,
                batch_tokens=params.batch_tokens,
                pad_to=graphed.classes.of if graphed is not None and graphed.active else None,
            ),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            disable=not show,
        )
        for _, batch in bar:
            batch = to_device(batch, device)
            replayed = graphed(batch) if graphed is not None else None
            if replayed is not None:
                loss, logits = replayed
            else:
                with autocast(device) if amp else contextlib.nullcontext():
                    logits = model(batch)
                loss = masked_loss(loss_fn, logits, batch)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
                scaler.step(opt)
                scaler.update()
            m = batch["loss_mask"]
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            n = m.sum()
            total_loss += loss.detach().double() * n
            total_n += n
            seen_p.append(torch.sigmoid(logits.detach().float()).flatten())
            seen_y.append(batch["answer"].flatten())
            seen_m.append(m.flatten())
            if show:  # the bar's running loss is the one per-step read, and only on a terminal
                bar.set_postfix(loss=f"{total_loss.item() / max(1, int(total_n)):.4f}")
        prob = score_windows(kept, valid_b, valid_w, len(valid_ff), params.eval_batch_size, device)
        labelled = (valid_ff.answer >= 0) & ~np.isnan(prob)
        v_auc = auc(valid_y[labelled], prob[labelled])
        v_loss = log_loss(valid_y[labelled], prob[labelled])
        seconds = time.perf_counter() - tick
        train_loss = total_loss.item() / max(1, int(total_n))
        train_auc = epoch_auc(seen_y, seen_p, seen_m)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "train_auc": train_auc, "valid_auc": v_auc,
             "valid_loss": v_loss, "seconds": seconds}
        )  # fmt: skip
        # Higher is better: AUC as is, losses negated.
        score = {"valid_auc": v_auc, "valid_loss": -v_loss, "train_loss": -train_loss}[criterion]
        improved = bool(np.isfinite(score)) and score > best_score
        print(
            f"epoch {epoch:3d}  loss {train_loss:.4f}  train_auc {train_auc:.4f}  valid_auc {v_auc:.4f}  "
            f"valid_loss {v_loss:.4f}  "
            f"{seconds:.1f}s{'  *' if improved else ''}",
            file=sys.stderr,
            flush=True,
        )
        if improved:
            best_score, best_auc, best_epoch, stale = score, v_auc, epoch, 0
            best_state = copy.deepcopy(kept.state_dict())
            if on_improve is not None:
                on_improve(kept, epoch, v_auc)
        else:
            stale += 1
            if stale >= params.patience:
                print(
                    f"early stop: no {criterion.replace('_', ' ')} gain for {params.patience} epochs", file=sys.stderr
                )
                break
    if graphed is not None and graphed.active:
        print(f"CUDA graphs: {len(graphed.graphs)} batch shapes captured, every step replayed", file=sys.stderr)
    if best_state is None:
        raise TrainingError(f"no epoch gave a finite {criterion.replace('_', ' ')}: training diverged")
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_auc, epoch, time.perf_counter() - t0, history, criterion, reason)


class WarmStartRefused(Exception):
    """The production model's weights cannot seed this model (another kind, another architecture)."""


def vocabulary_rows(old: FeatureEncoder, new: FeatureEncoder) -> dict[str, np.ndarray]:
    """Per embedding table of ``FeatureEncoder.sizes``: the old encoder's row of each of the new encoder's rows,
    -1 for a value the old one did not know. Vocabularies are sorted, so a new item shifts the rows after it:
    rows are matched by value, not by position."""
    rows: dict[str, np.ndarray] = {}
    for name in VOCAB_FEATURES:
        known = old.vocab[name]
        m = np.full(len(new.vocab[name]) + FIRST, -1, dtype=np.int64)
        m[:FIRST] = np.arange(FIRST)  # padding and unknown keep their rows
        for value, i in new.vocab[name].items():
            m[i] = known.get(value, -1)
        rows[name] = m
    for name, base in (("prev_tag_resp", "tag"), ("prev_item_resp", "item")):
        # Row FIRST + 2 * index + answer (dkt.data.features.FeatureEncoder.transform).
        r = np.arange(FIRST, 2 * len(rows[base]) + FIRST)
        src = rows[base][(r - FIRST) // 2]
        rows[name] = np.concatenate([np.arange(FIRST), np.where(src >= 0, FIRST + 2 * src + (r - FIRST) % 2, -1)])
    sizes = new.sizes()
    for name in ("elapsed", "prev_answer"):  # fixed vocabularies
        rows[name] = np.arange(sizes[name])
    return rows


def warm_start(model: nn.Module, old_state: dict[str, torch.Tensor], rows: dict[str, np.ndarray]) -> str:
    """Load ``old_state`` (a model of the same kind and parameters on an older vocabulary) into ``model``.

    An embedding table named after a vocabulary (``...cat.item``, ``...resp.prev_tag_resp``) gets the old row of
    every value both vocabularies know and keeps its fresh initialisation for the new values; every other
    tensor must keep its shape. Returns what was carried over; ``WarmStartRefused`` when a shape differs."""
    vocab_tables = {
        f"{name}.weight": name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in rows
    }
    state = model.state_dict()
    if set(state) != set(old_state):
        raise WarmStartRefused(f"the parameters differ ({len(set(state) ^ set(old_state))} names in only one)")
    new_rows = 0
    for key, tensor in state.items():  # state_dict tensors are detached views of the parameters
        old = old_state[key]
        if key in vocab_tables:
            m = rows[vocab_tables[key]]
            if len(m) != tensor.shape[0] or old.shape[1:] != tensor.shape[1:] or int(m.max()) >= old.shape[0]:
                raise WarmStartRefused(f"{key}: {tuple(old.shape)} cannot seed {tuple(tensor.shape)}")
            kept = torch.from_numpy(np.flatnonzero(m >= 0))
            tensor[kept] = old[torch.from_numpy(m[m >= 0])].to(tensor.dtype)
            new_rows += int((m < 0).sum())
        elif old.shape != tensor.shape:
            raise WarmStartRefused(f"{key}: shape {tuple(old.shape)} in production, {tuple(tensor.shape)} now")
        else:
            tensor.copy_(old)
    model.load_state_dict(state)
    return f"{len(state)} tensors from production, {new_rows} new embedding rows initialised fresh"
