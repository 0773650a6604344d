"""The training step as CUDA graphs (``train.cuda_graphs``): on a GPU a step of this project's small models is the
host's time, not the device's.

Profiled on an H100 (bench/cuda_profile_bench.py, docs/training-speed.md round 9), an lstm training run launches
about 190 kernels a step (its scoring included) and keeps the device busy about 13% of the time: the rest is
Python, dispatch and launches. A CUDA graph records
the whole step once (forward under autocast, the masked loss, backward, clipping, the fused AdamW update) and
replays it with one launch. A graph replays fixed shapes on fixed memory, so batches are padded (``Batcher.iterate``'s
``pad_to``) to a few shape classes: widths 8, 16, 32, ... up to ``max_seq_len``, each with as many rows as a batch of
that width can hold. Padding is windows and positions of ``PAD_ROW``, which the loss mask leaves out, as it leaves
out a batch's padding today (tests/dkt/models/test_sequence_models.py: for every kind, the same loss and gradients
as the unpadded batch).

A class is captured the first time a batch of it comes: two eager steps warm up on a side stream (cuDNN's and the
allocator's lazy set-up must not happen during capture), the weights and optimizer state are put back as they were,
then the step is captured and replayed. The learning rate is a device tensor the graph reads, set before each
replay from the scheduler's value. If capture fails (a model whose step reads a value on the host, say), the run
says so once and goes on eager: best effort, as torch may leave a failed capture's stream current (only lstm, whose
capture is measured, ships the flag).
"""

from __future__ import annotations

import bisect
import contextlib
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dkt.scoring import autocast

WIDTH_FLOOR = 8  # the narrowest class: narrower batches are few, and padding them to 8 costs the device next to nothing


@dataclass(frozen=True)
class ShapeClasses:
    """Batch shapes a run's training steps are padded to: ``widths[k]`` positions by ``rows[k]`` windows."""

    widths: tuple[int, ...]
    rows: tuple[int, ...]

    def of(self, n_windows: int, width: int) -> tuple[int, int]:
        """The (rows, width) a batch of ``n_windows`` windows, ``width`` wide, is padded to."""
        k = bisect.bisect_left(self.widths, width)
        if k == len(self.widths) or n_windows > self.rows[k]:
            raise ValueError(f"a batch of {n_windows} x {width} fits no shape class ({self})")
        return self.rows[k], self.widths[k]


def shape_classes(lengths: np.ndarray, max_seq_len: int, batch_size: int, batch_tokens: int | None) -> ShapeClasses:
    """The classes for training windows of these ``lengths`` (``window_lengths``), batched as the config says.

    A batch is as wide as its longest window. With ``batch_tokens`` one of width w holds at most budget // w windows,
    so the class of widths in (previous, W] needs budget // (previous + 1) rows, and never more than the windows of
    length up to W; without it every batch holds at most ``batch_size``.
    """
    widths, w = [], WIDTH_FLOOR
    while w < max_seq_len:
        widths.append(w)
        w *= 2
    widths.append(max_seq_len)
    lengths = np.maximum(lengths, 1)
    rows, previous = [], 0
    for width in widths:
        fit = int((lengths <= width).sum())
        most = batch_size if batch_tokens is None else batch_tokens // (previous + 1)
        rows.append(max(1, min(most, fit)))
        previous = width
    return ShapeClasses(tuple(widths), tuple(rows))


def masked_loss(loss_fn: nn.Module, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss over the batch's labelled positions (padding and unlabelled answers left out)."""
    m = batch["loss_mask"]
    return (loss_fn(logits.float(), batch["answer"]) * m).sum() / m.sum().clamp(min=1)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    loss: torch.Tensor
    logits: torch.Tensor


class GraphedStep:
    """Training steps replayed from one CUDA graph per shape class; ``active`` turns False if a capture fails."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        classes: ShapeClasses,
        loss_fn: nn.Module,
        grad_clip: float,
        amp: bool,
    ):
        self.model, self.opt, self.classes, self.loss_fn = model, opt, classes, loss_fn
        self.grad_clip, self.amp = grad_clip, amp
        self.device = next(model.parameters()).device
        # The graphs read each group's learning rate from these tensors; a float would be baked in at capture.
        self.lrs = [torch.tensor(float(g["lr"]), device=self.device) for g in opt.param_groups]
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.active = True

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # No cast cache: torch's rule for autocast under graph capture (a cached cast is a tensor the graph did not
        # allocate, reused across replays).
        with autocast(self.device, cache=False) if self.amp else contextlib.nullcontext():
            logits = self.model(batch)
        loss = masked_loss(self.loss_fn, logits, batch)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss, logits

    def _tensors(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, buffers and the optimizer's state."""
        state = (v for s in self.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
        return [*self.model.parameters(), *self.model.buffers(), *state]

    def _capture(self, batch: dict[str, torch.Tensor]) -> _Graph:
        inputs = {k: v.clone() for k, v in batch.items()}
        before = {id(t): t.detach().clone() for t in self._tensors()}
        groups = self.opt.param_groups
        saved = [(g["lr"], g["capturable"]) for g in groups]
        for g, lr in zip(groups, self.lrs, strict=True):
            g["lr"] = lr
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self.opt.zero_grad(set_to_none=True)
                        self._step(inputs)
            finally:
                # First wait for the warm-up (finished or failed part way), so the restore cannot race its updates.
                torch.cuda.current_stream().wait_stream(side)
                # The warm-up's updates undone: its steps are not the run's (state they made starts at zero).
                with torch.no_grad():
                    for t in self._tensors():
                        if id(t) in before:
                            t.copy_(before[id(t)])
                        else:
                            t.zero_()
            # Gradients None at capture: the graph's backward writes them afresh at every replay.
            self.opt.zero_grad(set_to_none=True)
            for g in groups:
                g["capturable"] = True  # only for the capture: run eagerly, torch warns that it slows the step
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loss, logits = self._step(inputs)
        finally:
            for g, (lr, capturable) in zip(groups, saved, strict=True):
                g["lr"], g["capturable"] = lr, capturable
        # Detached: frees the capture's autograd graph, which nothing backpropagates through again (kept alive, torch
        # warned at the next class's warm-up that its gradient accumulators belong to another stream). The values
        # read are the same memory.
        return _Graph(graph, inputs, loss.detach(), logits.detach())

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One training step on ``batch`` (padded to its class): the loss and logits, in the graph's memory (read
        them before the next step), or None when graphs are off for this run (the caller steps eagerly)."""
        if not self.active:
            return None
        n_windows, width = batch["loss_mask"].shape
        key = (n_windows, width)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self.graphs[key] = self._capture(batch)
            except Exception as exc:  # any capture failure leaves the run eager, said once
                self.active = False
                self.graphs.clear()
                self.opt.zero_grad(set_to_none=True)
                line = f"{type(exc).__name__}: {exc}".splitlines()[0]
                print(f"warning: CUDA graphs off for this run, training eagerly ({line})", file=sys.stderr)
                return None
        else:
            for k, v in batch.items():
                entry.inputs[k].copy_(v)
        for g, lr in zip(self.opt.param_groups, self.lrs, strict=True):
            lr.fill_(float(g["lr"]))  # the scheduler's value, a host float: no wait for the device
        entry.graph.replay()
        return entry.loss, entry.logits
