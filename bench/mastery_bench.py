"""Does one answer move its own skill's mastery, or every skill's? The figure of docs/mastery.md.

    .venv/bin/python bench/mastery_bench.py [--users 800] [--eval-users 40] [--steps 30] [--bundle DIR]

Simulated students (dkt/simulate.py: each student has an ability shared by all skills and a knowledge per
skill that grows only with practice in that skill, 30% of that in the next level of the same operation, and
fades with time away) train a model (``--config``, default a small LSTM; ``--bundle`` reuses one trained on
the same simulation), then held-out students' answers are replayed one at a time. For answer t, in skill s,
mastery per skill (the model's mean P(correct) on the skill's typical items) is taken before and after it;
the figure is the mean |change| of s's mastery over the mean |change| of each other skill's (target >= 3).

Views (all printed):
- raw_answer_only: ``mastery`` after the whole history, before and after answer t both asked when item t+1 is
  shown, so only the answer differs;
- raw_as_seen: ``mastery`` as a page sees it: before = when item t is shown, after = when item t+1 is;
- raw_bars_only: raw_as_seen counting only the skills that show a bar (answers before t; "not started" shows
  none), and only answers in a skill that already had one;
- shown: the figure a page shows (``skill_mastery``: after each skill's own answers, dkt/mastery.py) as seen,
  over the same skills and answers as raw_bars_only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dkt.config import parse_config  # noqa: E402
from dkt.data.schema import validate  # noqa: E402
from dkt.experiment import load_run_data, run  # noqa: E402
from dkt.predictor import Predictor, load_predictor  # noqa: E402
from dkt.simulate import simulate, write  # noqa: E402

SMALL_LSTM = {
    "model": "lstm",
    "model_params": {"d_model": 64, "emb_dim": 16, "hidden_dim": 64},
    "train": {"max_seq_len": 100, "batch_size": 64, "lr": 0.004, "epochs": 6, "patience": 2},
}


def train(sim_dir: Path, config: dict, out: Path, seed: int) -> Path:
    data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=seed)
    metrics = run(parse_config(config), data, out, device="cpu", seed=seed, model_version="bench", progress=False)
    print(f"trained {config['model']}: test AUC {metrics.get('test_auc', float('nan')):.4f}", file=sys.stderr)
    return out


def replay(predictor: Predictor, student: pd.DataFrame, steps: int) -> list[dict]:
    """Per answer t (the first ``steps``), mastery per skill: ``before`` (item t shown), ``after`` (item t+1 shown)
    and ``before_next`` (without answer t, at item t+1's time: the answer alone differs from ``after``)."""
    cands = predictor.catalog_candidates()
    n = min(len(student) - 1, steps)
    shown = student["Timestamp"]
    jobs = []
    for t in range(n):
        jobs += [(student.iloc[:t], cands, shown.iloc[t])] if t else []
        jobs += [(student.iloc[:t], cands, shown.iloc[t + 1]), (student.iloc[: t + 1], cands, shown.iloc[t + 1])]
    probs = iter(predictor.predict_candidates_batch(jobs))
    out = []
    for t in range(n):
        before = predictor.mastery(cands, next(probs)) if t else None
        before_next, after = predictor.mastery(cands, next(probs)), predictor.mastery(cands, next(probs))
        out.append(
            {
                "skill": int(student["KnowledgeTag"].iloc[t]),
                "raw": (before, before_next, after),
                # The shown figure: each skill after its own answers (Predictor.skill_mastery), at both times.
                "shown": (
                    predictor.skill_mastery(student.iloc[:t], at=shown.iloc[t]) if t else {},
                    predictor.skill_mastery(student.iloc[: t + 1], at=shown.iloc[t + 1]),
                ),
            }
        )
    return out


def ratio(own: list[float], other: list[float]) -> dict[str, float | None]:
    return {
        "own": float(np.mean(own)),
        "other": float(np.mean(other)),
        # None: the other skills did not move at all ("other": 0.0), a ratio without bound (JSON has no inf).
        "ratio": float(np.mean(own) / np.mean(other)) if np.mean(other) > 0 else None,
        "n_own": len(own),
        "n_other": len(other),
    }


def ratios(steps: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean |change| of the answered skill over that of the other skills, in each view (module doc)."""
    views: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("raw_answer_only", "raw_as_seen", "raw_bars_only", "shown")
    }
    for step in steps:
        tag = step["skill"]
        before, before_next, after = step["raw"]
        shown_before, shown_after = step["shown"]
        for view, a, b in (("raw_answer_only", before_next, after), ("raw_as_seen", before, after)):
            if a is None:
                continue
            views[view][0].append(abs(b[tag] - a[tag]))
            views[view][1].extend(abs(b[o] - a[o]) for o in a if o != tag)
        if before is not None and tag in shown_before:
            # Only skills with a bar before and after count: a skill without answers shows "not started".
            views["raw_bars_only"][0].append(abs(after[tag] - before[tag]))
            views["raw_bars_only"][1].extend(abs(after[o] - before[o]) for o in shown_before if o != tag)
            views["shown"][0].append(abs(shown_after[tag] - shown_before[tag]))
            views["shown"][1].extend(abs(shown_after[o] - shown_before[o]) for o in shown_before if o != tag)
    return {view: ratio(own, other) for view, (own, other) in views.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=800, help="simulated students (80%% train, 20%% held out)")
    ap.add_argument("--eval-users", type=int, default=40, help="held-out students replayed")
    ap.add_argument("--steps", type=int, default=30, help="answers replayed per student")
    ap.add_argument("--config", type=Path, help="an experiment config (JSON); default: a small LSTM")
    ap.add_argument("--bundle", type=Path, help="a trained bundle on the same simulation (skips training)")
    ap.add_argument("--save-bundle", type=Path, help="keep the trained bundle here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = json.loads(args.config.read_text()) if args.config else SMALL_LSTM
    with tempfile.TemporaryDirectory() as tmp:
        sim_dir = Path(tmp) / "sim"
        write(simulate(args.users, seed=args.seed), sim_dir, test_ratio=0.2, seed=args.seed)
        start = time.perf_counter()
        bundle = args.bundle or train(sim_dir, config, args.save_bundle or Path(tmp) / "model", args.seed)
        trained_s = time.perf_counter() - start
        predictor = load_predictor(bundle)
        test = validate(pd.read_csv(sim_dir / "test.csv"), "test.csv")
        users = sorted(test["userID"].unique())[: args.eval_users]
        steps: list[dict] = []
        start = time.perf_counter()
        for user in users:
            student = test[test["userID"] == user].sort_values("Timestamp", kind="stable").reset_index(drop=True)
            steps.extend(replay(predictor, student, args.steps))
        result: dict = ratios(steps) | {
            "model": predictor.meta.get("model_name", config["model"]),
            "train_s": round(trained_s, 1),
            "replay_s": round(time.perf_counter() - start, 1),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
