"""Model vs oracle AUC on simulated data, with answered-at timestamps (the old, leaky semantics) and shown-at (the fix).

    .venv/bin/python bench/time_leak_bench.py                          # lstm, 400 students, 5 epochs
    .venv/bin/python bench/time_leak_bench.py --kinds lstm,lstmattn,bert,saint,dkvmn --json var/leak.json

The simulator's response times depend on correctness, so when ``Timestamp`` is the
answered-at time, ``elapsed`` at item t contains item t's own response time and a
model can read part of the answer off it: its test AUC rises above the oracle AUC
(the true probabilities, the best any honest model can do). With shown-at
timestamps (the semantics of docs/time-semantics.md) every model stays below it.
Both runs use the same students, split, shipped config (config/<kind>.json) and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from dkt.config import load_config  # noqa: E402
from dkt.data.schema import COLUMNS, validate  # noqa: E402
from dkt.experiment import RunData, run  # noqa: E402
from dkt.metrics import auc  # noqa: E402
from dkt.simulate import answered_at, simulate, split_users  # noqa: E402

SEQUENCE_KINDS = ("lstm", "lstmattn", "bert", "saint", "dkvmn")


def run_data(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame) -> RunData:
    parts = [
        validate(df.loc[:, list(COLUMNS)], name) for df, name in ((train, "train"), (valid, "valid"), (test, "test"))
    ]
    return RunData(*parts, fingerprints={"train_file": "simulated", "test": "simulated"})


def compare(
    kinds: list[str], users: int, epochs: int, seed: int, device: str, work: Path
) -> tuple[float, list[dict[str, Any]]]:
    sim = simulate(users, seed=seed)
    rest, test = split_users(sim.interactions, 0.25, seed)
    train, valid = split_users(rest, 0.2, seed + 1)
    oracle = auc(test["answerCode"].to_numpy(), test["p_true"].to_numpy())
    semantics = {
        "shown_at": run_data(train, valid, test),
        "answered_at": run_data(*map(answered_at, (train, valid, test))),
    }
    rows = []
    for kind in kinds:
        row: dict[str, Any] = {"kind": kind, "oracle_auc": round(oracle, 4)}
        for name, data in semantics.items():
            t0 = time.perf_counter()
            metrics = run(
                load_config(ROOT / "config" / f"{kind}.json"),
                data,
                work / f"{kind}-{name}",
                epochs=epochs,
                device=device,
                seed=seed,
                progress=False,
            )
            row[f"auc_{name}"] = round(float(metrics["test_auc"]), 4)
            row[f"seconds_{name}"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return oracle, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--kinds",
        default="lstm",
        help=f"comma-separated sequence kinds (default lstm; all: {','.join(SEQUENCE_KINDS)})",
    )
    p.add_argument("--users", type=int, default=400, help="simulated students (default 400)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per model (default 5)")
    p.add_argument("--seed", type=int, default=0, help="simulation, split and training seed (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "time_leak", help="where bundles go")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SEQUENCE_KINDS))
    if unknown:
        p.error(f"unknown sequence kind(s) {unknown}; known: {list(SEQUENCE_KINDS)}")
    if args.users < 8 or args.epochs < 1:
        p.error("--users must be at least 8 and --epochs at least 1")

    oracle, rows = compare(kinds, args.users, args.epochs, args.seed, args.device, args.work)
    print(f"simulated: {args.users} students, seed {args.seed}, {args.epochs} epoch(s); oracle test AUC {oracle:.4f}")
    print(f"{'kind':<10}{'answered-at (leak)':>20}{'vs oracle':>11}{'shown-at (fix)':>16}{'vs oracle':>11}")
    for r in rows:
        leak, fix = r["auc_answered_at"], r["auc_shown_at"]
        print(f"{r['kind']:<10}{leak:>20.4f}{leak - oracle:>+11.4f}{fix:>16.4f}{fix - oracle:>+11.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"oracle_auc": oracle, "users": args.users, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
