"""Training speed: our lstm (train.py's path, config/lstm.json) against a minimal reference DKT (bench/min_dkt.py),
both to early stopping, in one run on the same data and the same train/validation split.

    .venv/bin/python bench/train_speed_bench.py                       # ASSISTments 2009 train file (shared split)
    .venv/bin/python bench/train_speed_bench.py --max-students 600    # a quick run on the first 600 students
    .venv/bin/python bench/train_speed_bench.py --data train.txt test.txt --data-format kt3

    .venv/bin/python bench/train_speed_bench.py --max-students 200 --threads 1 --set train.window_stride=100
                                                                      # ours with a config key changed (repeatable)
    .venv/bin/python bench/train_speed_bench.py --also 'train.bucket_batches=false train.batch_tokens=null'
                                                                      # also ours as it was, in the same run
    .venv/bin/python bench/train_speed_bench.py --seeds 42,1,2,3      # every model at each seed; the means

Validation users are held out of the train file as train.py holds them out (``dkt.experiment.split_run_files``,
the config's valid_ratio, seed 42). The reference keeps its own settings (``min_dkt.fit``'s defaults: chunks of
200, batches of 64, Adam at 2e-3, at most 30 epochs, patience 3; the values config/lstm.json had when the
baseline was first measured), so tuning ours does not move the baseline; ``--epochs`` caps both. Prints per
model the time to early stopping, epochs (best), seconds per epoch, validation and test AUC, then the ratio
lstm / reference. With ``--seeds`` every model trains once per seed (the models in turn at each seed, so a drift
in the machine's speed falls on all of them alike; the validation users stay those of seed 42) and the table and
ratios are of the means; the JSON keeps every seed's run. Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench import min_dkt  # noqa: E402
from dkt.config import ConfigError, ExperimentConfig, load_config, parse_config  # noqa: E402
from dkt.data.io import load_run_files  # noqa: E402
from dkt.data.schema import DataValidationError  # noqa: E402
from dkt.experiment import run, split_run_files  # noqa: E402
from dkt.metrics import auc  # noqa: E402
from dkt.models.interface import RunData  # noqa: E402

ASSIST2009 = ROOT.parent / "shared" / "data" / "assist2009"
REFERENCE_LEN = 200  # min_dkt.fit's default chunk length: the test set is cut as it trains


def first_students(df: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The rows of the first ``n`` students in file order (all with None)."""
    if n is None:
        return df
    keep = pd.unique(df["userID"])[:n]
    return df[df["userID"].isin(keep)].reset_index(drop=True)


def sequences(df: pd.DataFrame, skills: np.ndarray) -> list[min_dkt.Seq]:
    """Per student, in time order: (skill index into ``skills``, answer); unlabelled rows dropped."""
    d = df[df["answerCode"] >= 0].sort_values(["userID", "Timestamp"], kind="stable")
    skill = np.searchsorted(skills, d["KnowledgeTag"].to_numpy())
    answer = d["answerCode"].to_numpy().astype(np.int64)
    user = d["userID"].to_numpy()
    cuts = np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])
    return [(skill[s:e], answer[s:e]) for s, e in itertools.pairwise(cuts)]


def reference(
    data: RunData, epochs: int | None, device: str, foreach: bool | None = None, seed: int = 42
) -> dict[str, Any]:
    """bench/min_dkt.py trained to early stopping with its own settings (``--epochs``: at most that many;
    ``foreach``: its Adam's implementation, default torch's for the device)."""
    skills = np.unique(pd.concat([data.train, data.valid, data.test])["KnowledgeTag"].to_numpy())
    train, valid = sequences(data.train, skills), sequences(data.valid, skills)
    cap = {"epochs": epochs} if epochs else {}
    model, r = min_dkt.fit(train, valid, len(skills), **cap, seed=seed, device=device, foreach=foreach)
    test = min_dkt.tensors(sequences(data.test, skills), len(skills), REFERENCE_LEN)
    return r | {"test_auc": auc(*min_dkt.predict(model, test))}


def ours(cfg: ExperimentConfig, data: RunData, epochs: int | None, device: str, seed: int = 42) -> dict[str, Any]:
    """train.py's path (``dkt.experiment.run``: encode, fit, write and verify the bundle, evaluate on test)."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        m = run(cfg, data, out, epochs=epochs, device=device, seed=seed, progress=False)
        wall = time.perf_counter() - t0
    return {
        "seconds": m["train_seconds"],
        "epochs": m["epochs_run"],
        "best_epoch": m["best_epoch"],
        "valid_auc": m["valid_auc"],
        "test_auc": m["test_auc"],
        "run_wall_s": round(wall, 1),
    }


def with_changes(cfg: ExperimentConfig, changes: list[str], flag: str = "--set") -> ExperimentConfig:
    """``cfg`` with each ``SECTION.KEY=JSON`` change applied (SECTION: train or model_params), checked as a config
    file is; ConfigError naming the change otherwise."""
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    for change in changes:
        key, sep, value = change.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("train", "model_params") or not name:
            raise ConfigError(f"{flag} {change}: expected train.KEY=VALUE or model_params.KEY=VALUE")
        try:
            raw.setdefault(section, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{flag} {change}: the value is not JSON (a string needs quotes)") from None
    return parse_config(raw, flag) if changes else cfg


def seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated distinct integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 42,1,2; got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over one model's seeds (the table's seconds per epoch is then mean seconds over mean
    epochs)."""
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data, --data-format, --config, --set and --max-students (read by ``config_and_data``; bench/op_count_bench.py
    too)."""
    default = (ASSIST2009 / "train.csv", ASSIST2009 / "test.csv")
    p.add_argument("--data", nargs=2, type=Path, metavar=("TRAIN", "TEST"), default=default, help="ASSISTments 2009")
    p.add_argument("--data-format", choices=["kt3", "csv"], default="kt3", help="default kt3 (3-line files)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "lstm.json")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=JSON",
        help="change one key of ours' config, e.g. train.window_stride=200 or model_params.d_model=64 (repeatable)",
    )
    p.add_argument("--max-students", type=int, help="only the first N students of each file (quick runs)")


def config_and_data(args: argparse.Namespace) -> tuple[ExperimentConfig, RunData]:
    """Our config (--config with each --set) and the run files ``add_data_arguments`` named, cut to --max-students,
    with validation users held out as train.py holds them out. ConfigError or DataValidationError on bad input,
    a --device cuda that torch cannot see among them (for the benches that take --device)."""
    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device on this machine")
    if args.max_students is not None and args.max_students < 2:
        raise ConfigError("--max-students must be at least 2")
    cfg = with_changes(load_config(args.config), args.set)
    files = load_run_files(*args.data, None, args.data_format)
    files.train = first_students(files.train, args.max_students)
    files.test = first_students(files.test, args.max_students)
    return cfg, split_run_files(files, cfg.train.valid_ratio, seed=42)


def also_variants(cfg: ExperimentConfig, also: list[str]) -> dict[str, ExperimentConfig]:
    """Each --also (space-separated ``SECTION.KEY=JSON`` changes) applied to ``cfg``, keyed by its text."""
    return {changes: with_changes(cfg, changes.split(), "--also") for changes in also}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, help="cap on epochs for both (default: the config's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="both models (cuda: ours with train.amp)")
    p.add_argument("--threads", type=int, help="torch threads for both (default: torch's own)")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="'SECTION.KEY=JSON ...'",
        help="also time ours with these keys changed (after --set), in the same run; space-separated changes, one "
        "run per --also (repeatable), e.g. --also 'train.batch_tokens=null train.bucket_batches=false'",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=[42],
        metavar="N,N,...",
        help="train every model once per seed and report the means (default 42)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one line (or --help); exit 2 on bad input, 0 on --help
        return int(exc.code or 0)
    if args.threads is not None and args.threads < 1:
        print("error: --threads must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg, data = config_and_data(args)
        variants = also_variants(cfg, args.also)
    except (ConfigError, DataValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # The first optimizer imports torch._dynamo (seconds, more under load): paid here, not by whichever runs first.
    importlib.import_module("torch._dynamo")
    load = os.getloadavg()[0]
    print(
        f"{data.train['userID'].nunique()} train / {data.valid['userID'].nunique()} validation students, "
        f"{len(data.train):,} answers; torch threads {torch.get_num_threads()}; load {load:.1f}",
        file=sys.stderr,
    )
    ref_name = "reference DKT (bench/min_dkt.py)"
    changed = f", {' '.join(args.set)}" if args.set else ""
    configs = {f"{cfg.model}, {changes}": variant for changes, variant in variants.items()}
    configs[f"{cfg.model} ({args.config.name}{changed})"] = cfg
    per_seed: dict[str, list[dict[str, Any]]] = {ref_name: [], **{name: [] for name in configs}}
    for seed in args.seeds:
        per_seed[ref_name].append(reference(data, args.epochs, args.device, seed=seed))
        print(f"reference, seed {seed}: {json.dumps(per_seed[ref_name][-1])}", file=sys.stderr, flush=True)
        for name, variant in configs.items():
            per_seed[name].append(ours(variant, data, args.epochs, args.device, seed=seed))
            print(f"{name}, seed {seed}: {json.dumps(per_seed[name][-1])}", file=sys.stderr, flush=True)
    results = {name: runs[0] if len(runs) == 1 else mean_run(runs) for name, runs in per_seed.items()}

    if len(args.seeds) > 1:
        print(f"means over {len(args.seeds)} seeds ({','.join(map(str, args.seeds))})")
    print("| model | to early stop (s) | epochs (best) | s / epoch | valid AUC | test AUC |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        epochs = f"{r['epochs']:.3g} ({r['best_epoch']:.3g})"
        print(
            f"| {name} | {r['seconds']:.1f} | {epochs} | {r['seconds'] / r['epochs']:.2f} "
            f"| {r['valid_auc']:.4f} | {r['test_auc']:.4f} |"
        )
    ref = results[ref_name]
    ratios = {name: r["seconds"] / ref["seconds"] for name, r in results.items() if name != ref_name}
    *also, own = ratios  # the --also runs, then the config's own
    for name in also:
        print(f"time to early stopping, {name} / reference: {ratios[name]:.2f}x")
    ratio = ratios[own]
    print(
        f"time to early stopping, {cfg.model} / reference: {ratio:.2f}x (target 1.5x); "
        f"load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        saved = {"results": results, "ratio": ratio, "ratios": ratios, "load": load, "seeds": args.seeds}
        args.json.write_text(json.dumps(saved | {"per_seed": per_seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
