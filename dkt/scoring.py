"""Running a sequence model over windows and collecting one probability per row."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from dkt.data.sequences import PAD_ROW, Batcher, Windows, to_device


@torch.no_grad()
def score_windows(
    model: nn.Module, batcher: Batcher, windows: Windows, n_rows: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """P(correct) per row of the FeatureFrame behind ``batcher``; NaN for rows no window scores."""
    was_training = model.training
    model.eval()
    out = np.full(n_rows, np.nan, dtype=np.float64)
    # Every batch queued before any result is read: a read waits for the GPU, so one per batch would keep the host
    # from queueing the next batch while the GPU runs this one. The positions kept are known on the host.
    scored = []
    for sel, batch in batcher.iterate(windows, batch_size):
        batch = to_device(batch, device)
        with autocast(device):
            prob = torch.sigmoid(model(batch).float())
        rows = windows.index[sel, : prob.shape[1]]
        keep = (rows != PAD_ROW) & windows.score[sel, : prob.shape[1]]
        scored.append((rows[keep], keep, prob))
    for rows, keep, prob in scored:
        out[rows] = prob.cpu().numpy()[keep]
    model.train(was_training)
    return out


def autocast(device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 where the GPU has it), full precision elsewhere. ``cache``: autocast's cache of
    cast weights (off under CUDA graph capture, dkt.cuda_graphs)."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()
