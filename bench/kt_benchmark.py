"""Train every model kind on any pair of 3-line KT files (ASSISTments 2009's by default) and on simulated data;
print one table.

    .venv/bin/python bench/kt_benchmark.py                      # all models, both data sets
    .venv/bin/python bench/kt_benchmark.py --models lstm,dkvmn --datasets assist2009 --device cuda
    .venv/bin/python bench/kt_benchmark.py --pair statics=STATICS_train.csv,STATICS_test.csv   # any pair
    .venv/bin/python bench/kt_benchmark.py --models bert --datasets assist2009 --threads 1 \
        --max-students 600 --epochs 8 --set train.lr=0.002 --set model_params.max_positions=256

--max-students trains on the first N students of the train file and tests on the first N of the test file
(quick comparisons; validation users are held out of those N as train.py holds them out). --set PATH=VALUE
(repeatable) overrides one field of every chosen model's config before it is validated: a dotted path into
the config's JSON and a JSON value (a bare word is a string), so a variant needs no config file.

--pair NAME=TRAIN,TEST (repeatable) adds a data set of two files in the 3-line format of DKVMN's data (a line with
the sequence's length, one of skill or question ids, one of answers); validation users are held out of TRAIN, and
hyperparameters are the configs' own, so TEST is only ever scored. With --pair and no --datasets, only the pairs run.

Columns: test AUC over all predicted answers and over each user's last one,
accuracy, RMSE, parameters, seconds per epoch, epochs to early stop, and for simulated
data the oracle AUC (from the true answer probabilities) and the gap to it.
Bundles are kept under --work so they can be inspected or served afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.train_speed_bench import first_students  # noqa: E402
from dkt.bundle import read_json_file  # noqa: E402
from dkt.config import ConfigError, parse_config  # noqa: E402
from dkt.data.io import load_run_files  # noqa: E402
from dkt.experiment import run, split_run_files  # noqa: E402
from dkt.models import model_names  # noqa: E402
from dkt.simulate import simulate, write  # noqa: E402

ASSIST2009 = ROOT.parent / "shared" / "data" / "assist2009"
PUBLISHED = {"DKT (Piech et al. 2015)": 0.8053, "DKVMN (Zhang et al. 2017)": 0.8157}


def override(doc: dict[str, Any], setting: str) -> None:
    """Apply one ``--set a.b.c=value`` to a config document in place (value parsed as JSON, else a string)."""
    path, sep, raw = setting.partition("=")
    keys = path.split(".")
    if not sep or not all(keys):
        raise ValueError(f"--set {setting!r}: expected PATH=VALUE, e.g. train.lr=0.001")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    node = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {setting!r}: {k} is not an object in the config")
    node[keys[-1]] = value


def parse_pair(value: str) -> tuple[str, Path, Path]:
    """``NAME=TRAIN,TEST`` -> (name, train, test); both files must exist."""
    name, sep, files = value.partition("=")
    raw = files.split(",") if sep else []
    if not name or len(raw) != 2 or not all(raw):  # the strings: Path("") is "." and would pass
        raise ValueError(f"--pair {value!r}: expected NAME=TRAIN,TEST, e.g. statics=train.csv,test.csv")
    train, test = Path(raw[0]), Path(raw[1])
    for f in (train, test):
        if not f.is_file():
            raise ValueError(f"--pair {value!r}: {f}: no such file")
    return name, train, test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(model_names()), help="comma-separated (default: all)")
    p.add_argument("--datasets", help="assist2009, sim or both (default: both; none when --pair is given)")
    p.add_argument("--pair", action="append", default=[], metavar="NAME=TRAIN,TEST", help="a pair of 3-line KT files")
    p.add_argument("--sim-users", type=int, default=2000, help="simulated students (default 2000)")
    p.add_argument("--epochs", type=int, help="cap on epochs (default: each config's own, with early stopping)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench", help="where bundles and data go")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own; 1 on a busy CPU)")
    p.add_argument("--max-students", type=int, help="only the first N students of each file (quick comparisons)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a config field")
    args = p.parse_args(argv)
    if args.max_students is not None and args.max_students < 2:
        p.error("--max-students must be at least 2")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(model_names()))
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {model_names()}")

    datasets: dict[str, tuple[Path, Path, str, float | None]] = {}
    for value in args.pair:
        try:
            name, train_file, test_file = parse_pair(value)
        except ValueError as exc:
            p.error(str(exc))
        if name in datasets or name in ("assist2009", "sim"):
            p.error(f"--pair {value!r}: the name {name!r} is taken; give each data set its own")
        datasets[name] = (train_file, test_file, "kt3", None)
    names = args.datasets if args.datasets is not None else ("" if args.pair else "assist2009,sim")
    for name in filter(None, names.split(",")):
        if name == "assist2009":
            datasets[name] = (ASSIST2009 / "train.csv", ASSIST2009 / "test.csv", "kt3", None)
        elif name == "sim":
            sim_dir = args.work / f"sim{args.sim_users}"
            if not (sim_dir / "oracle.json").is_file():
                write(simulate(args.sim_users, seed=0, progress=True), sim_dir)
            oracle = json.loads((sim_dir / "oracle.json").read_text())["oracle_auc_test"]
            datasets[name] = (sim_dir / "train.csv", sim_dir / "test.csv", "csv", oracle)
        else:
            p.error(f"unknown data set {name!r}")

    configs = {}
    for model in models:
        cfg_path = ROOT / "config" / f"{model}.json"
        try:
            doc = read_json_file(cfg_path, "config file", ConfigError)
            for setting in args.set:
                override(doc, setting)
            configs[model] = (cfg_path, parse_config(doc, str(cfg_path)))
        except (ValueError, ConfigError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    rows = []
    for ds, (train, test, fmt, oracle) in datasets.items():
        files = load_run_files(train, test, None, fmt)
        files.train = first_students(files.train, args.max_students)
        files.test = first_students(files.test, args.max_students)
        for model in models:
            cfg_path, cfg = configs[model]
            data = split_run_files(files, cfg.train.valid_ratio, seed=42)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            m = run(
                cfg,
                data,
                args.work / ds / model,
                epochs=args.epochs,
                device=args.device,
                seed=42,
                config_dir=cfg_path.parent,
                progress=sys.stderr.isatty(),
            )
            row = {
                "data": ds,
                "model": model,
                "test_auc": m["test_auc"],
                "test_auc_last": m["test_auc_last"],
                "test_acc": m["test_acc"],
                "test_rmse": m["test_rmse"],
                "n_params": m["n_params"],
                "s_per_epoch": m["seconds_per_epoch"],
                "epochs": m["epochs_run"],
                "wall_s": round(time.perf_counter() - t0, 1),
                "device": m["device"],
                "threads": torch.get_num_threads(),
                "load_start": round(load, 1),
                "load_end": round(os.getloadavg()[0], 1),
                "valid_auc": m.get("valid_auc"),
                "best_epoch": m.get("best_epoch"),
                "set": args.set,
                "oracle_auc": oracle,
                "gap_to_oracle": None if oracle is None else oracle - m["test_auc"],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    header = ("| data | model | AUC | AUC last | acc | RMSE | params | s/epoch | epochs (best) | wall s "
              "| AUC/oracle | gap |")  # fmt: skip
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        ratio = "" if r["oracle_auc"] is None else f"{r['test_auc'] / r['oracle_auc']:.4f}"
        gap = "" if r["gap_to_oracle"] is None else f"{r['gap_to_oracle']:+.4f}"
        print(
            f"| {r['data']} | {r['model']} | {r['test_auc']:.4f} | {r['test_auc_last']:.4f} | {r['test_acc']:.4f} "
            f"| {r['test_rmse']:.4f} "
            f"| {r['n_params']:,} | {r['s_per_epoch']:.1f} | {r['epochs']} ({r['best_epoch']}) | {r['wall_s']:.0f} "
            f"| {ratio} | {gap} |"
        )
    for ds, (_, _, _, oracle) in datasets.items():
        if oracle is not None:
            print(f"{ds}: oracle AUC on test users {oracle:.4f}")
        elif ds == "assist2009":
            print(f"{ds}: published " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
