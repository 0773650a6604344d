"""The plain mean of trained bundles' test predictions on a 3-line pair: how far an untuned ensemble gets.

    .venv/bin/python bench/ensemble_mean_bench.py lstm=artifacts/lstm bert=artifacts/bert saint=artifacts/saint

Each bundle scores the test file through the loader serving uses (``dkt.predictor.load_predictor``), as
``dkt.experiment.run`` evaluates a single model, so a bundle's own line repeats the test AUC its training printed.
Then every combination of two or more bundles is scored by the mean of their probabilities: no weight is fitted,
so nothing is chosen on the test file (issue 16 item 3 asks hyperparameters be chosen by validation; a mean has
none). The stacked ensemble kind (``dkt/models/ensemble.py``) fits its weights on validation instead.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.bundle_args import bundle_parser, load_bundle, read_test  # noqa: E402
from dkt.metrics import evaluate_predictions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = bundle_parser(__doc__, "NAME=BUNDLE_DIR, two or more")
    args = parser.parse_args(argv)
    if len(args.bundles) < 2:
        parser.error("give two or more bundles")
    test = read_test(parser, args)
    if test is None:
        return 2
    preds: dict[str, np.ndarray] = {}
    print("| bundles | test AUC | AUC last | acc | seconds |\n|---|---|---|---|---|")
    for name, folder in args.bundles:
        t0 = time.perf_counter()
        predictor = load_bundle(name, folder)
        if predictor is None:
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
