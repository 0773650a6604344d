from __future__ import annotations

import numpy as np
import pandas as pd

from dkt.data.features import FeatureEncoder
from dkt.data.schema import validate
from dkt.data.sequences import PAD_ROW, Batcher, make_windows, token_batches, window_lengths


def user_rows(user: str, n: int) -> list[tuple]:
    return [
        (user, f"A060001{i % 13 + 1:03d}", "A060000001", i % 2, pd.Timestamp("2020-01-01") + pd.Timedelta(seconds=i), 7)
        for i in range(n)
    ]


def make_ff(lengths: dict[str, int]):
    rows = [r for u, n in lengths.items() for r in user_rows(u, n)]
    cols = ["userID", "assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]
    df = validate(pd.DataFrame(rows, columns=cols), "test")
    return FeatureEncoder.fit(df).transform(df)


def test_long_histories_are_windowed_and_every_row_scored_once() -> None:
    ff = make_ff({"long": 23, "short": 4})
    w = make_windows(ff, max_len=10, stride=5)
    scored = w.index[w.score]
    assert sorted(scored.tolist()) == list(range(len(ff)))  # each row exactly once
    trained = set(w.index[w.index != PAD_ROW].tolist())
    assert trained == set(range(len(ff)))  # no row dropped from training
    # Each scored row sees at least max_len - stride rows of history when it has them.
    for k in range(len(w)):
        pos = np.flatnonzero(w.score[k])
        start = w.index[k, 0]
        user_start = ff.user_starts[np.searchsorted(ff.user_starts, start, side="right") - 1]
        if start > user_start:
            assert pos.min() >= 5


def test_last_only_gives_one_window_per_user_ending_at_last_row() -> None:
    ff = make_ff({"a": 30, "b": 3})
    w = make_windows(ff, max_len=8, last_only=True)
    assert len(w) == 2
    lengths = (w.index != PAD_ROW).sum(axis=1)
    assert lengths.tolist() == [8, 3]
    assert w.index[0, 7] == 29 and w.index[1, 2] == 32


def test_batches_are_right_padded_with_masks() -> None:
    ff = make_ff({"a": 6, "b": 3})
    w = make_windows(ff, max_len=8)
    _, batch = next(Batcher(ff).iterate(w, batch_size=8))
    assert batch["mask"].shape == (2, 6)  # trimmed to the longest window in the batch
    assert batch["mask"].sum(dim=1).tolist() == [6, 3]
    assert (batch["item"][1, 3:] == 0).all()
    assert not batch["loss_mask"][1, 3:].any()


def test_bucketed_batches_hold_every_window_once_with_less_padding() -> None:
    # Most students short, a few long (as in real data): random batches are mostly padding.
    lengths = {f"u{i:03d}": int(n) for i, n in enumerate(np.random.default_rng(0).geometric(0.1, 200))}
    ff = make_ff(lengths)
    w = make_windows(ff, max_len=30, stride=15)
    real = int((w.index != PAD_ROW).sum())

    def computed(bucket: bool, seed: int) -> tuple[list[int], int]:
        b = Batcher(ff)
        seen, cells = [], 0
        for sel, batch in b.iterate(w, 16, shuffle=True, rng=np.random.default_rng(seed), bucket=bucket):
            seen += sel.tolist()
            cells += batch["mask"].numel()
            # The batch holds exactly those windows' rows: trimming never cuts a real row.
            assert int(batch["mask"].sum()) == int((w.index[sel] != PAD_ROW).sum())
        return sorted(seen), cells

    seen, random_cells = computed(False, 1)
    bseen, bucket_cells = computed(True, 1)
    assert seen == bseen == list(range(len(w)))
    assert bucket_cells < 0.6 * random_cells and bucket_cells <= 1.2 * real, (bucket_cells, random_cells, real)
    # Still shuffled: another seed gives another batch order.
    first = [sel.tolist() for sel, _ in Batcher(ff).iterate(w, 16, True, np.random.default_rng(2), bucket=True)]
    other = [sel.tolist() for sel, _ in Batcher(ff).iterate(w, 16, True, np.random.default_rng(3), bucket=True)]
    assert first != other


def test_token_batches_fit_the_budget_hold_every_window_once_and_are_shuffled() -> None:
    lengths = {f"u{i:03d}": int(n) for i, n in enumerate(np.random.default_rng(0).geometric(0.1, 200))}
    ff = make_ff(lengths)
    w = make_windows(ff, max_len=30, stride=30)
    budget = 120

    def batches(seed: int) -> list[tuple[list[int], tuple[int, int], int]]:
        it = Batcher(ff).iterate(w, 16, shuffle=True, rng=np.random.default_rng(seed), bucket=True, batch_tokens=budget)
        return [(sel.tolist(), tuple(b["mask"].shape), int(b["mask"].sum())) for sel, b in it]

    got = batches(1)
    assert sorted(i for sel, _, _ in got for i in sel) == list(range(len(w)))
    # Every batch within the budget of positions (windows x its width), and none of them could take one more window
    # of its width: short windows go many to a batch (more than batch_size), long ones few.
    assert all(rows * width <= budget for _, (rows, width), _ in got)
    sizes = sorted(rows for _, (rows, _), _ in got)
    assert sizes[0] <= 4 and sizes[-1] > 16, sizes
    # About as many answers a step: the padded positions are a small share of those computed.
    real, cells = sum(n for *_, n in got), sum(r * c for _, (r, c), _ in got)
    assert real >= 0.8 * cells, (real, cells)
    assert [sel for sel, *_ in batches(2)] != [sel for sel, *_ in got]
    # The count of steps depends on the lengths only (the learning-rate schedule is set from it before training).
    assert len(batches(2)) == len(got) == len(token_batches(window_lengths(w), np.arange(len(w)), budget, None))
    # Sorted by length and cut greedily; a window longer than the budget still trains, alone.
    assert [b.tolist() for b in token_batches(np.array([5, 50, 7]), np.arange(3), 20, None)] == [[0, 2], [1]]


def test_pad_to_pads_each_batch_with_whole_windows_and_positions_of_padding() -> None:
    ff = make_ff({"a": 6, "b": 3, "c": 5})
    w = make_windows(ff, max_len=8)
    tight = [b for _, b in Batcher(ff).iterate(w, batch_size=2)]
    padded = [b for _, b in Batcher(ff).iterate(w, batch_size=2, pad_to=lambda rows, width: (rows + 2, width + 3))]
    assert [b["mask"].shape for b in tight] == [(2, 6), (1, 5)]
    assert [b["mask"].shape for b in padded] == [(4, 9), (3, 8)]
    for t, p in zip(tight, padded, strict=True):
        assert t.keys() == p.keys()
        rows, width = t["mask"].shape
        for key, value in t.items():
            assert (p[key][:rows, :width] == value).all(), key  # the real part is the batch as it was
        for key in ("mask", "loss_mask", "score_pos", "score_mask"):
            assert not p[key][rows:].any() and not p[key][:, width:].any(), key  # padding is never trained or scored
        assert (p["item"][rows:] == 0).all() and (p["item"][:, width:] == 0).all()  # padding reads the padding row
