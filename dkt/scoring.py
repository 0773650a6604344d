"""Running a sequence model over windows and collecting one probability per row."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from dkt.data.sequences import Batcher, Windows, to_device


@torch.no_grad()
def score_windows(
    model: nn.Module, batcher: Batcher, windows: Windows, n_rows: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """P(correct) per row of the FeatureFrame behind ``batcher``; NaN for rows no window scores."""
    was_training = model.training
    model.eval()
    out = np.full(n_rows, np.nan, dtype=np.float64)
    for sel, batch in batcher.iterate(windows, batch_size):
        batch = to_device(batch, device)
        with autocast(device):
            prob = torch.sigmoid(model(batch).float())
        keep = batch["score_pos"].cpu().numpy()
        rows = windows.index[sel, : prob.shape[1]]
        out[rows[keep]] = prob.cpu().numpy()[keep]
    model.train(was_training)
    return out


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 where the GPU has it), full precision elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
