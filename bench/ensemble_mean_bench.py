"""The plain mean of trained bundles' test predictions on a 3-line pair: how far an untuned ensemble gets.

    .venv/bin/python bench/ensemble_mean_bench.py lstm=artifacts/lstm bert=artifacts/bert saint=artifacts/saint

Each bundle scores the test file through the loader serving uses (``dkt.predictor.load_predictor``), as
``dkt.experiment.run`` evaluates a single model, so a bundle's own line repeats the test AUC its training printed.
Then every combination of two or more bundles is scored by the mean of their probabilities: no weight is fitted,
so nothing is chosen on the test file (issue 16 item 3 asks hyperparameters be chosen by validation; a mean has
none). The stacked ensemble kind (``dkt/models/ensemble.py``) fits its weights on validation instead.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dkt.bundle import BundleError  # noqa: E402
from dkt.data.io import load_run_files  # noqa: E402
from dkt.metrics import evaluate_predictions  # noqa: E402
from dkt.predictor import load_predictor  # noqa: E402

ASSIST2009 = ROOT.parent / "shared" / "data" / "assist2009"


def named_bundle(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=BUNDLE_DIR")
    if not (Path(folder) / "bundle.json").is_file():
        raise argparse.ArgumentTypeError(f"{folder}: not a model bundle (no bundle.json)")
    return name, Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=named_bundle, help="NAME=BUNDLE_DIR, two or more")
    parser.add_argument("--train", type=Path, default=ASSIST2009 / "train.csv", help="3-line train file")
    parser.add_argument("--test", type=Path, default=ASSIST2009 / "test.csv", help="3-line test file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if len(args.bundles) < 2:
        parser.error("give two or more bundles")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    for path in (args.train, args.test):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    test = load_run_files(args.train, args.test, None, "kt3").test
    preds: dict[str, np.ndarray] = {}
    print("| bundles | test AUC | AUC last | acc | seconds |\n|---|---|---|---|---|")
    for name, folder in args.bundles:
        t0 = time.perf_counter()
        try:
            predictor = load_predictor(folder)
        except BundleError as exc:
            print(f"error: {name}={folder}: {exc}", file=sys.stderr)
            return 2
        preds[name] = np.asarray(predictor.predict_rows(test), dtype=float)
        m = evaluate_predictions(test, preds[name], prefix="test_")
        seconds = time.perf_counter() - t0
        print(f"| {name} | {m['test_auc']:.4f} | {m['test_auc_last']:.4f} | {m['test_acc']:.4f} | {seconds:.0f} |")
    for k in range(2, len(preds) + 1):
        for combo in itertools.combinations(preds, k):
            m = evaluate_predictions(test, np.mean([preds[c] for c in combo], axis=0), prefix="test_")
            print(f"| mean of {' + '.join(combo)} | {m['test_auc']:.4f} | {m['test_auc_last']:.4f} "
                  f"| {m['test_acc']:.4f} | |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
