"""What a fresh process pays to import the project's modules, and why dkt.metrics has its own AUC.

    .venv/bin/python bench/import_bench.py [--repeat 3] [--answers 300000]

Every training, evaluation, `dkt` command and `bentoml serve` worker is a new process, and the test suite starts
hundreds of them: an import's CPU time is paid each time. For each module, the median user+sys CPU seconds of
`python -c "import <module>"` over --repeat fresh interpreters (CPU, not wall: the figure holds on a busy
machine). Then the AUC of dkt.quality (what dkt.metrics.auc calls) against sklearn's roc_auc_score on the same
--answers scores, side by side: the difference and the time of each. Figures: docs/serving.md ("Import cost").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["numpy", "pandas", "torch", "sklearn.metrics", "lightgbm", "dkt.quality", "dkt.metrics", "dkt.experiment"]


def child_cpu(argv: list[str], repeat: int, **run: Any) -> float:
    """Median user+sys CPU seconds of ``argv`` run as a child process ``repeat`` times (``run``: subprocess.run's)."""
    samples = []
    for _ in range(repeat):
        before = os.times()
        subprocess.run(argv, **{"cwd": ROOT, "check": True, **run})
        after = os.times()
        samples.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
    return statistics.median(samples)


def import_cpu(module: str, repeat: int) -> float:
    return child_cpu([sys.executable, "-c", f"import {module}"], repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="fresh interpreters per module (median)")
    ap.add_argument("--answers", type=int, default=300_000, help="scores in the AUC comparison")
    args = ap.parse_args()
    if args.repeat < 1 or args.answers < 2:
        ap.error("--repeat must be >= 1 and --answers >= 2")
    print(f"load average {os.getloadavg()[0]:.1f}; CPU seconds to import, median of {args.repeat}:")
    base = import_cpu("sys", args.repeat)
    for module in MODULES:
        print(f"  {module:<16} {import_cpu(module, args.repeat) - base:6.2f} s (over a bare interpreter)")

    sys.path.insert(0, str(ROOT))
    from sklearn.metrics import roc_auc_score

    from dkt.metrics import auc

    rng = np.random.default_rng(0)
    y = (rng.random(args.answers) < 0.6).astype(int)
    p = np.round(np.clip(0.6 + 0.2 * (y - 0.5) + 0.2 * rng.standard_normal(args.answers), 0, 1), 3)  # with ties
    t0 = time.process_time()
    ours = auc(y, p)
    t1 = time.process_time()
    theirs = float(roc_auc_score(y, p))
    t2 = time.process_time()
    print(f"AUC on {args.answers:,} scores: dkt.metrics {ours:.12f} ({t1 - t0:.3f} s), "
          f"sklearn {theirs:.12f} ({t2 - t1:.3f} s), |diff| {abs(ours - theirs):.1e}")  # fmt: skip
    saved = import_cpu("sklearn.metrics", args.repeat) - base
    print(f"imports: sklearn_metrics_cpu_s={saved:.2f} auc_diff={abs(ours - theirs):.1e}")


if __name__ == "__main__":
    main()
