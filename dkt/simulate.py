"""Simulated students answering the item bank, following a known learning model.

    dkt simulate --users 1000 --out data/sim     (python -m dkt.simulate is the same)

Each student has an ability, a learning rate and a forgetting time. Knowledge of
a skill grows with practice (more after a correct answer), transfers a little to
the next level of the same operation, and decays between practice sessions.
P(correct) = guess + (1 - guess) * sigmoid(1.7 * (ability + knowledge - item difficulty)).
Because that probability is written beside every answer, the oracle AUC, the
best any model can reach on this data, is known.

Time follows docs/time-semantics.md: ``Timestamp`` is when the item was shown;
``ResponseTime`` (seconds) is how long the student took to answer it, log-normal,
longer for wrong answers and weaker students; the next item is shown after that
plus a short gap. A model that saw answered-at times (``answered_at``) would read
part of each answer off its own response time and score above the oracle: the
leak test (tests/dkt/test_time_semantics.py) relies on that.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from dkt.cli import Parser
from dkt.data.schema import COLUMNS
from dkt.itembank import LEVELS, OPERATIONS, SKILLS, build_item_bank
from dkt.metrics import auc

GUESS = 0.05  # typed answers: little chance of guessing right
SLOPE = 1.7
KNOWLEDGE_CAP = 3.0
START = pd.Timestamp("2020-01-01")
# Response time: median (RT_BASE_S + RT_PER_LEVEL_S * level) s, times WRONG_SLOWDOWN for a wrong answer and
# exp(-RT_ABILITY * ability) for the student. Strong enough that the response time of the item being
# predicted, were it leaked, tells a model more than the true probability does (see the module doc).
RT_BASE_S = 6.0
RT_PER_LEVEL_S = 3.0
WRONG_SLOWDOWN = 3.0
RT_ABILITY = 0.25
RT_SIGMA = 0.3
RT_MIN_S = 1.0  # at least a second to read and type: answered-at times then stay distinct per user
GAP_MEDIAN_S = 4.0  # reading the feedback and loading the next item
COLUMNS_OUT: tuple[str, ...] = (*COLUMNS, "ResponseTime", "p_true")


@dataclass
class Simulation:
    questions: pd.DataFrame
    interactions: pd.DataFrame  # canonical columns (Timestamp = shown at) + ResponseTime + p_true

    def oracle_auc(self, df: pd.DataFrame | None = None) -> float:
        df = self.interactions if df is None else df
        return auc(df["answerCode"].to_numpy(), df["p_true"].to_numpy())


Item = tuple[str, int, float]  # assessmentItemID, KnowledgeTag, difficulty


def _items_by_test(questions: pd.DataFrame) -> dict[str, list[Item]]:
    """Each test's items in item-bank order, looked up once (per-answer DataFrame lookups were most of the time)."""
    by_test: dict[str, list[Item]] = {}
    cols = questions[["assessmentItemID", "testId", "KnowledgeTag", "difficulty"]]
    for item, test_id, tag, difficulty in cols.itertuples(index=False):
        by_test.setdefault(test_id, []).append((item, int(tag), float(difficulty)))
    return by_test


def _student(
    uid: int, items_of: dict[str, list[Item]], tests: dict[tuple[str, int], list[str]], rng: np.random.Generator
) -> list[tuple]:
    ability = rng.normal(0.0, 0.8)
    learn_rate = float(np.exp(rng.normal(np.log(0.15), 0.4)))
    forget_s = float(np.exp(rng.normal(np.log(3 * 86400), 0.6)))
    slowness = float(np.exp(-RT_ABILITY * ability))
    knowledge = {s.tag: 0.0 for s in SKILLS}
    last_seen: dict[int, float] = {}
    frontier = dict.fromkeys(OPERATIONS, 1)
    t = float(rng.uniform(0, 90 * 86400))
    n_tests = 2 + int(rng.geometric(1 / 12))
    rows = []
    for _ in range(n_tests):
        op = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        level = frontier[op] if rng.random() > 0.2 else int(rng.integers(1, frontier[op] + 1))
        options = tests[(op, level)]
        test_id = options[int(rng.integers(len(options)))]
        items = items_of[test_id]
        correct_count = 0
        for item, tag, difficulty in items:
            if tag in last_seen:  # forgetting: part of what was learned fades with time away
                knowledge[tag] *= 0.55 + 0.45 * np.exp(-(t - last_seen[tag]) / forget_s)
            logit = SLOPE * (ability + knowledge[tag] - difficulty)
            p = GUESS + (1 - GUESS) * (1 / (1 + np.exp(-logit)))
            y = int(rng.random() < p)
            median = (RT_BASE_S + RT_PER_LEVEL_S * level) * slowness * (1.0 if y else WRONG_SLOWDOWN)
            response = max(RT_MIN_S, round(float(np.exp(rng.normal(np.log(median), RT_SIGMA))), 3))
            rows.append((f"u{uid:05d}", item, test_id, y, START + pd.Timedelta(seconds=t), tag, response, p))
            gain = learn_rate * (1.0 if y else 0.6) * (1 - knowledge[tag] / KNOWLEDGE_CAP)
            knowledge[tag] += gain
            nxt = tag + 1  # the next level of the same operation
            if nxt in knowledge:
                knowledge[nxt] += 0.3 * gain
            last_seen[tag] = t
            correct_count += y
            # The next item is shown once this one is answered and the feedback read: t is always a shown-at time.
            t += response + max(1.0, float(np.exp(rng.normal(np.log(GAP_MEDIAN_S), 0.4))))
        if correct_count / len(items) >= 0.7 and frontier[op] < max(LEVELS):
            frontier[op] += 1
        t += float(rng.uniform(60, 600)) if rng.random() < 0.6 else float(rng.uniform(6 * 3600, 4 * 86400))
    return rows


def simulate(n_users: int, seed: int = 0, progress: bool = False) -> Simulation:
    questions = build_item_bank(seed=seed)
    bank = questions.copy()
    skill_of_test = bank.groupby("testId")["KnowledgeTag"].first()
    tests: dict[tuple[str, int], list[str]] = {}
    for s in SKILLS:
        tests[(s.op, s.level)] = sorted(skill_of_test.index[skill_of_test == s.tag])
    items_of = _items_by_test(bank)
    rng = np.random.default_rng(seed + 1)
    rows: list[tuple] = []
    for uid in tqdm(range(n_users), desc="students", disable=not progress):
        rows.extend(_student(uid, items_of, tests, rng))
    df = pd.DataFrame(rows, columns=list(COLUMNS_OUT))
    df["answerCode"] = df["answerCode"].astype("int8")
    # One user's items are shown at least RT_MIN_S + 1 s apart, so whole seconds stay strictly increasing.
    df["Timestamp"] = df["Timestamp"].dt.floor("s")
    return Simulation(questions=questions, interactions=df)


def answered_at(df: pd.DataFrame) -> pd.DataFrame:
    """The same answers stamped when they were answered (shown at + response time): the old, leaky semantics.

    Only for measuring the leak; per user the order is unchanged, since the next item is shown after the
    previous one was answered.
    """
    out = df.copy()
    out["Timestamp"] = (out["Timestamp"] + pd.to_timedelta(out["ResponseTime"], unit="s")).dt.floor("s")
    return out


def split_users(df: pd.DataFrame, test_ratio: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = np.sort(df["userID"].unique())
    rng = np.random.default_rng(seed)
    test_users = set(rng.choice(users, max(1, round(len(users) * test_ratio)), replace=False))
    is_test = df["userID"].isin(test_users)
    return df[~is_test], df[is_test]


def write(sim: Simulation, out: Path, test_ratio: float = 0.2, seed: int = 0) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    train, test = split_users(sim.interactions, test_ratio, seed)
    fmt = "%Y-%m-%d %H:%M:%S"
    sim.questions.to_csv(out / "questions.csv", index=False)
    for name, part in (("interactions", sim.interactions), ("train", train), ("test", test)):
        part.to_csv(out / f"{name}.csv", index=False, date_format=fmt, float_format="%.6f")
    summary = {
        "oracle_auc": round(sim.oracle_auc(), 6),
        "oracle_auc_test": round(sim.oracle_auc(test), 6),
        "n_users": int(sim.interactions["userID"].nunique()),
        "n_rows": len(sim.interactions),
        "n_items": len(sim.questions),
        "n_tests": int(sim.questions["testId"].nunique()),
        "n_skills": int(sim.questions["KnowledgeTag"].nunique()),
        "accuracy": round(float(sim.interactions["answerCode"].mean()), 4),
        "seed": seed,
    }
    (out / "oracle.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="dkt simulate", description=__doc__)
    p.add_argument("--users", type=int, default=1000, help="number of students (default 1000)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--test-ratio", type=float, default=0.2, help="share of users in test.csv (default 0.2)")
    args = p.parse_args(argv)
    if args.users < 2:
        p.error("--users must be at least 2")
    if not 0 < args.test_ratio < 1:
        p.error("--test-ratio must be between 0 and 1")
    sim = simulate(args.users, seed=args.seed, progress=sys.stderr.isatty())
    summary = write(sim, args.out, args.test_ratio, args.seed)
    print(
        f"wrote {summary['n_rows']:,} answers of {summary['n_users']:,} students to {args.out}; "
        f"oracle AUC {summary['oracle_auc']:.4f} (test users {summary['oracle_auc_test']:.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
