"""dkt.cuda_graphs: the shapes training batches are padded to for CUDA graphs, and the flag the CPU ignores.

The graphs themselves need a GPU: bench/gpu_run.sh --train-speed measures them there (docs/training-speed.md,
round 9). What every model kind must give for a padded batch is tested in tests/dkt/models/test_sequence_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dkt.config import TrainParams
from dkt.cuda_graphs import WIDTH_FLOOR, shape_classes
from dkt.data.features import FeatureEncoder
from dkt.data.schema import COLUMNS, validate
from dkt.data.sequences import token_batches
from dkt.models import kind_class
from dkt.simulate import simulate
from dkt.training import fit_sequence_model, seed_everything


def lengths_like_assistments(rng: np.random.Generator) -> np.ndarray:
    """Mostly short windows and a fifth of full ones (ASSISTments 2009's training windows at 200)."""
    return np.concatenate([rng.integers(1, 200, 2400), np.full(700, 200)])


def test_widths_double_from_the_floor_up_to_the_window() -> None:
    assert shape_classes(np.array([1, 50, 200]), 200, 32, 2048).widths == (8, 16, 32, 64, 128, 200)
    assert shape_classes(np.array([1, 5]), 8, 32, None).widths == (WIDTH_FLOOR,)
    assert shape_classes(np.array([1, 100]), 100, 32, None).widths == (8, 16, 32, 64, 100)


@pytest.mark.parametrize("budget", [200, 2048, 4096])
def test_every_token_batch_fits_a_class_less_than_twice_as_wide_and_never_far_beyond_the_budget(budget: int) -> None:
    rng = np.random.default_rng(0)
    lengths = lengths_like_assistments(rng)
    classes = shape_classes(lengths, 200, 32, budget)
    used = set()
    for _ in range(3):  # epochs: each cuts the shuffled windows anew
        for sel in token_batches(lengths, rng.permutation(len(lengths)), budget, rng):
            width = int(lengths[sel].max())
            rows, cols = classes.of(len(sel), width)
            assert rows >= len(sel) and cols >= width
            assert cols == WIDTH_FLOOR or cols < 2 * width  # padding at most doubles a batch's width
            if cols > WIDTH_FLOOR:
                assert rows * cols <= 2 * budget  # nor, past the narrowest class, its positions
            used.add((rows, cols))
    assert len(used) <= len(classes.widths)  # one graph per class, captured once


def test_without_a_budget_every_class_holds_a_batch_of_batch_size() -> None:
    lengths = lengths_like_assistments(np.random.default_rng(1))
    classes = shape_classes(lengths, 200, 32, None)
    assert set(classes.rows) == {32}
    assert classes.of(32, 200) == (32, 200) and classes.of(5, 9) == (32, 16)
    assert shape_classes(np.array([3, 4, 5]), 200, 32, None).rows[0] == 3  # never more rows than windows


@pytest.mark.parametrize(("rows", "width"), [(1, 201), (33, 10)])
def test_a_batch_no_class_holds_is_an_error_naming_it(rows: int, width: int) -> None:
    classes = shape_classes(np.full(100, 200), 200, 32, None)
    with pytest.raises(ValueError, match=f"a batch of {rows} x {width} fits no shape class"):
        classes.of(rows, width)


def test_the_cpu_ignores_the_flag(one_torch_thread: None) -> None:
    """cuda_graphs is for CUDA: on the CPU a training with it is the training without it, epoch for epoch."""
    df = validate(simulate(60, seed=3).interactions[list(COLUMNS)], "sim")
    users = np.sort(df["userID"].unique())
    train, valid = df[df["userID"].isin(users[:48])], df[df["userID"].isin(users[48:])]
    enc = FeatureEncoder.fit(train)
    histories = []
    for graphs in (False, True):
        seed_everything(0)
        model = kind_class("lstm").build({"d_model": 16, "hidden_dim": 16}, enc.sizes())
        params = TrainParams(max_seq_len=40, batch_tokens=200, epochs=2, cuda_graphs=graphs)
        fit = fit_sequence_model(
            model, enc.transform(train), enc.transform(valid), params, torch.device("cpu"), seed=0, progress=False
        )
        histories.append([{k: v for k, v in h.items() if k != "seconds"} for h in fit.history])
    assert histories[0] == histories[1] and len(histories[0]) == 2
