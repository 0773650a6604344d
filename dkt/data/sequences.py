"""Per-user sequences cut into sliding windows, padded, masked and batched.

Long histories are never truncated: a user with more than ``max_len`` answers
gives several overlapping windows (``make_windows``, for training).

Scoring (evaluation, ``inference.py``, the service) goes through one rule,
``window_start``: a user's answer at position t (0-based, in time order) is
scored in the window of rows [window_start(t), t], a function of t alone, never
of how many answers the user has after t. Features are computed over the whole
history before the window is cut, so a service that sees the n answers before a
candidate gives it exactly the inputs an offline pass over the full file does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dkt.data.features import CATEGORICAL, RESPONSE, FeatureFrame

PAD_ROW = -1


@dataclass
class Windows:
    index: np.ndarray  # (n, max_len) row indices into a FeatureFrame; PAD_ROW where padded
    score: np.ndarray  # (n, max_len) bool: positions whose prediction counts for evaluation

    def __len__(self) -> int:
        return len(self.index)


def make_windows(ff: FeatureFrame, max_len: int, stride: int | None = None, last_only: bool = False) -> Windows:
    """Cut every user's rows into windows of at most ``max_len`` rows.

    ``last_only`` gives one window per user ending at their last row (serving).
    """
    stride = stride or max_len
    if not 0 < stride <= max_len:
        raise ValueError(f"stride must be in 1..max_len ({max_len}), got {stride}")
    rows, scores = [], []
    for start, end in zip(ff.user_starts[:-1], ff.user_starts[1:], strict=True):
        n = end - start
        if last_only or n <= max_len:
            s = max(start, end - max_len)
            rows.append((s, end))
            scores.append((s, end))
            continue
        covered = start
        ws = [*list(range(start, end - max_len, stride)), end - max_len]
        for s in ws:
            e = s + max_len
            rows.append((s, e))
            scores.append((max(s, covered), e))
            covered = e
    index = np.full((len(rows), max_len), PAD_ROW, dtype=np.int64)
    score = np.zeros((len(rows), max_len), dtype=bool)
    for k, ((s, e), (ss, se)) in enumerate(zip(rows, scores, strict=True)):
        index[k, : e - s] = np.arange(s, e)
        score[k, ss - s : se - s] = True
    return Windows(index=index, score=score)


def eval_stride(max_len: int) -> int:
    """Window starts used for scoring are multiples of this."""
    return max(1, max_len // 2)


def window_start(t: np.ndarray | int, max_len: int) -> np.ndarray:
    """First position of the window that scores position ``t`` of a user's history (positions are 0-based).

    Windows start at multiples of ``eval_stride(max_len)``; position t is scored in the earliest such
    window that still holds it, so it sees between ``max_len - stride - 1`` and ``max_len - 1`` answers
    before it once the user has that many.
    """
    stride = eval_stride(max_len)
    t = np.asarray(t, dtype=np.int64)
    if np.any(t < 0):
        raise ValueError("positions must be >= 0")
    # ceil((t - max_len + 1) / stride), clipped at window 0
    return np.maximum(0, -((max_len - 1 - t) // stride)) * stride


def scoring_windows(ff: FeatureFrame, max_len: int, targets: np.ndarray | None = None) -> Windows:
    """Windows that score each target row of ``ff`` (default: every row) at the place ``window_start`` gives it.

    Targets sharing a window start share one window (the models are causal: a position's output depends
    only on the rows before it in its window), so scoring every row costs about two passes over the data.
    """
    rows = np.arange(len(ff), dtype=np.int64) if targets is None else np.asarray(targets, dtype=np.int64)
    if len(rows) == 0:
        return Windows(index=np.full((0, max_len), PAD_ROW, dtype=np.int64), score=np.zeros((0, max_len), bool))
    user = np.searchsorted(ff.user_starts, rows, side="right") - 1
    first = ff.user_starts[user]
    start = first + window_start(rows - first, max_len)
    starts, group = np.unique(start, return_inverse=True)
    group = group.reshape(-1)
    ends = np.zeros(len(starts), dtype=np.int64)
    np.maximum.at(ends, group, rows + 1)
    cols = np.arange(max_len, dtype=np.int64)
    index = np.where(cols[None, :] < (ends - starts)[:, None], starts[:, None] + cols[None, :], PAD_ROW)
    score = np.zeros(index.shape, dtype=bool)
    score[group, rows - start] = True
    return Windows(index=index, score=score)


class Batcher:
    """Gathers padded tensors for windows of one FeatureFrame.

    ``device``: where the columns live and batches are gathered. The training loop puts them on its accelerator
    once, so a step's batch is a few gathers there instead of a gather on the host and a dozen host-to-device
    copies (on an H100 these, not the model, set an lstm epoch's time: docs/training-speed.md).
    """

    def __init__(self, ff: FeatureFrame, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

        # One extra all-zero row at the end: PAD_ROW (-1) indexes it directly.
        def padded(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([a, np.zeros((1, *a.shape[1:]), dtype=a.dtype)])).to(self.device)

        self.cat = {k: padded(ff.cat[k]) for k in CATEGORICAL}
        self.resp = {k: padded(ff.resp[k]) for k in RESPONSE}
        self.cont = padded(ff.cont)
        self.answer = padded(np.clip(ff.answer, 0, 1).astype(np.float32))
        self.labelled = padded(ff.answer >= 0)

    def batch(self, index: np.ndarray, score: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        idx = host_to_device(index, self.device)
        mask = idx != PAD_ROW
        out: dict[str, torch.Tensor] = {k: v[idx] for k, v in self.cat.items()}
        out.update({k: v[idx] for k, v in self.resp.items()})
        out["cont"] = self.cont[idx]
        out["answer"] = self.answer[idx]
        out["mask"] = mask
        labelled = self.labelled[idx] & mask
        out["loss_mask"] = labelled
        scored = mask & host_to_device(score, self.device) if score is not None else mask
        out["score_pos"] = scored  # every position to predict, labelled or not (answerCode -1)
        out["score_mask"] = labelled & scored  # positions that count for metrics
        return out

    def iterate(
        self,
        windows: Windows,
        batch_size: int,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        bucket: bool = False,
        batch_tokens: int | None = None,
        pad_to: Callable[[int, int], tuple[int, int]] | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Batches of ``windows`` in order, or shuffled; with ``shuffle``, ``batch_tokens`` cuts them by positions
        (``token_batches``), else ``bucket`` by length (``bucketed``). ``pad_to`` maps a batch's (windows, width) to
        the shape it is padded to, with windows and positions of ``PAD_ROW`` (CUDA graphs replay fixed shapes:
        dkt.cuda_graphs)."""
        order = np.arange(len(windows))
        lengths = window_lengths(windows)
        if shuffle:
            rng = rng or np.random.default_rng()
            rng.shuffle(order)
        if shuffle and batch_tokens is not None:
            batches = token_batches(lengths, order, batch_tokens, rng)
        elif shuffle and bucket:
            batches = bucketed(lengths, order, batch_size, rng)
        else:
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for sel in batches:
            # Trim columns that are padding in every window of the batch: shorter batches, less compute.
            width = int(lengths[sel].max())
            if pad_to is None:
                yield sel, self.batch(windows.index[sel, :width], windows.score[sel, :width])
                continue
            rows, cols = pad_to(len(sel), width)
            index = np.full((rows, cols), PAD_ROW, dtype=windows.index.dtype)
            score = np.zeros((rows, cols), dtype=windows.score.dtype)
            index[: len(sel), :width] = windows.index[sel, :width]
            score[: len(sel), :width] = windows.score[sel, :width]
            yield sel, self.batch(index, score)


def window_lengths(windows: Windows) -> np.ndarray:
    """Real (unpadded) rows per window; windows are left-aligned, padding on the right."""
    return (windows.index != PAD_ROW).sum(axis=1)


def bucketed(lengths: np.ndarray, order: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of the windows in ``order`` (``lengths``: each window's, ``window_lengths``) of similar length, in
    random order.

    A batch is as wide as its longest window, so random batches over short and long users were mostly padding
    (on ASSISTments 2009, 2.35 computed positions per real one). Sorting the shuffled windows by length
    (stable, so equal lengths stay in random order) and cutting batches from that brings it to 1.02; the batch
    order is then shuffled, so every window is still seen once per epoch with the same loss.
    """
    by_length = order[np.argsort(lengths[order], kind="stable")]
    batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def token_batches(
    lengths: np.ndarray, order: np.ndarray, budget: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Batches of the windows in ``order`` sorted by length (stable), each as many as fit ``budget`` positions (its
    windows x its longest window's length; at least one window), in random order (``rng``; None: by length)."""
    by_length = order[np.argsort(lengths[order], kind="stable")]
    sorted_len = np.maximum(lengths[by_length], 1)
    batches, start = [], 0
    while start < len(by_length):
        # Sorted ascending, so a batch ending at j is sorted_len[j] wide: take the most windows that fit.
        fit = np.arange(1, len(by_length) - start + 1) * sorted_len[start:] <= budget
        n = max(1, int(np.argmin(fit)) if not fit.all() else len(fit))
        batches.append(by_length[start : start + n])
        start += n
    return batches if rng is None else [batches[k] for k in rng.permutation(len(batches))]


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``, without making the host wait for the GPU.

    A copy from ordinary (pageable) host memory to a GPU first waits for every kernel already queued, so a training
    step that copies its batch's rows there cannot be queued while the GPU still runs the step before it. Staged in
    pinned memory, the copy is queued like a kernel (torch's pinned-memory cache keeps the stage until it is done).
    """
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
