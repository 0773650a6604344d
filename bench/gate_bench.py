"""What the promotion gates' paired bootstrap costs and how narrow its interval is, by number of answers.

    .venv/bin/python bench/gate_bench.py [--answers 200 1000 5000 50000] [--n-boot 1000]

Synthetic models on the same answers, compared by ``pipeline.promotions.compare`` as both gates do: production
is a noisy signal of the answer; "worse" is production plus more noise (truly a little worse); "equal" is
another signal with production's own noise level (the same AUC in expectation). Prints per size and
candidate: seconds, production − candidate AUC, its 95% interval and the gate's verdict at the tolerance.
The interval's width is what decides how many answers a gate needs before it can promote an equal model
(docs/pipeline.md#promotion-gates, where the figures are).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# bench/ runs as a script: the repository root goes on the path before the project's imports.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dkt.settings import TrainingSettings, load
from pipeline.promotions import compare, decide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, nargs="+", default=[200, 1000, 5000, 50000])
    ap.add_argument("--n-boot", type=int, default=load(TrainingSettings).gate_bootstrap)
    args = ap.parse_args()
    tolerance = load(TrainingSettings).promote_tolerance
    rng = np.random.default_rng(0)
    print(f"n_boot {args.n_boot}, tolerance {tolerance}")
    print("answers  candidate  seconds  diff     ci95                verdict")
    for n in args.answers:
        y = rng.integers(0, 2, n)
        production = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
        candidates = {
            "worse": np.clip(production + rng.normal(0, 0.1, n), 0, 1),
            "equal": np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1),
        }
        for name, candidate in candidates.items():
            start = time.perf_counter()
            f = compare(y, candidate, production, args.n_boot)
            took = time.perf_counter() - start
            lo, hi = f["diff_ci95"]
            verdict = decide(f, tolerance, "production").verdict
            print(f"{n:>7}  {name:<9}  {took:>7.2f}  {f['diff']:+.4f}  [{lo:+.4f}, {hi:+.4f}]  {verdict}")


if __name__ == "__main__":
    main()
