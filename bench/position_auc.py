"""Test AUC by the answer's position in the student's sequence: where one model gains or loses against another.

    .venv/bin/python bench/position_auc.py lstm=artifacts/lstm bert=artifacts/bert
    .venv/bin/python bench/position_auc.py bert=artifacts/bert --window 300     # score with longer windows

Each bundle scores every test answer through the loader serving uses (``dkt.predictor.load_predictor``), as
bench/ensemble_mean_bench.py does, so a bundle's "all" row repeats the test AUC its training printed. The rows are
buckets of the answer's position in its student's sequence (0 is the first answer); a bucket with no answers of both
classes shows "-". ``--window N`` scores a sequence bundle with windows of N answers instead of its own
``train.max_seq_len`` (the one window rule, ``dkt.data.sequences.window_start``, with N): how much more or less history
moves a model that was trained on the same windows (docs/sequence-models.md, round 12).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.bundle_args import bundle_parser, load_bundle, read_test  # noqa: E402
from dkt.metrics import auc  # noqa: E402
from dkt.models.sequence import SequencePredictor  # noqa: E402

BUCKETS = ((0, 1), (1, 5), (5, 20), (20, 50), (50, 100), (100, 200), (200, 400), (400, None))


def positions(df: pd.DataFrame) -> np.ndarray:
    """Each row's position in its user's sequence (time order, file order among equal times), aligned with ``df``."""
    order = df.assign(_row=np.arange(len(df))).sort_values(["userID", "Timestamp", "_row"], kind="stable")
    pos = np.empty(len(df), dtype=np.int64)
    pos[order["_row"].to_numpy()] = order.groupby("userID").cumcount().to_numpy()
    return pos


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo} and after" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")


def table(df: pd.DataFrame, preds: dict[str, np.ndarray]) -> list[list[str]]:
    """Rows of [bucket, answers, one AUC per model], then the row of all answers."""
    y, pos = df["answerCode"].to_numpy(), positions(df)
    rows = []
    for lo, hi in (*BUCKETS, (0, None)):
        pick = (y >= 0) & (pos >= lo) & (pos < (hi if hi is not None else np.iinfo(np.int64).max))
        name = "all" if (lo, hi) == (0, None) else bucket_name(lo, hi)
        cells = []
        for p in preds.values():
            keep = pick & ~np.isnan(p)
            value = auc(y[keep], p[keep])
            cells.append("-" if np.isnan(value) else f"{value:.4f}")
        rows.append([name, f"{int(pick.sum()):,}", *cells])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bundle_parser(__doc__, "NAME=BUNDLE_DIR, one or more")
    parser.add_argument("--window", type=int, default=None, help="score with windows of N answers (sequence kinds)")
    args = parser.parse_args(argv)
    if args.window is not None and args.window < 2:
        parser.error("--window must be at least 2")
    test = read_test(parser, args)
    if test is None:
        return 2
    preds: dict[str, np.ndarray] = {}
    for name, folder in args.bundles:
        predictor = load_bundle(name, folder)
        if predictor is None:
            return 2
        if args.window is not None:
            if not isinstance(predictor, SequencePredictor):
                print(f"error: {name}={folder}: --window needs a sequence model's bundle", file=sys.stderr)
                return 2
            predictor.max_seq_len = args.window
        preds[name] = np.asarray(predictor.predict_rows(test), dtype=float)
    print(f"| position | answers | {' | '.join(preds)} |\n|{'---|' * (2 + len(preds))}")
    for row in table(test, preds):
        print(f"| {' | '.join(row)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
