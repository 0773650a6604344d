"""Train every model on ASSISTments 2009 and on simulated data; print one table.

    .venv/bin/python bench/kt_benchmark.py                      # all models, both data sets
    .venv/bin/python bench/kt_benchmark.py --models lstm,dkvmn --datasets assist2009 --device cuda

Columns: test AUC over all predicted answers and over each user's last one,
accuracy, parameters, seconds per epoch, epochs to early stop, and for simulated
data the oracle AUC (from the true answer probabilities) and the gap to it.
Bundles are kept under --work so they can be inspected or served afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dkt.config import load_config  # noqa: E402
from dkt.experiment import load_run_data, run  # noqa: E402
from dkt.models import model_names  # noqa: E402
from dkt.simulate import simulate, write  # noqa: E402

ASSIST2009 = ROOT.parent / "shared" / "data" / "assist2009"
PUBLISHED = {"DKT (Piech et al. 2015)": 0.8053, "DKVMN (Zhang et al. 2017)": 0.8157}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(model_names()), help="comma-separated (default: all)")
    p.add_argument("--datasets", default="assist2009,sim", help="assist2009, sim or both (default)")
    p.add_argument("--sim-users", type=int, default=2000, help="simulated students (default 2000)")
    p.add_argument("--epochs", type=int, help="cap on epochs (default: each config's own, with early stopping)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench", help="where bundles and data go")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(model_names()))
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {model_names()}")

    datasets: dict[str, tuple[Path, Path, str, float | None]] = {}
    for name in args.datasets.split(","):
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

    rows = []
    for ds, (train, test, fmt, oracle) in datasets.items():
        for model in models:
            cfg_path = ROOT / "config" / f"{model}.json"
            cfg = load_config(cfg_path)
            data = load_run_data(train, test, None, fmt, cfg.train.valid_ratio, seed=42)
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
                "n_params": m["n_params"],
                "s_per_epoch": m["seconds_per_epoch"],
                "epochs": m["epochs_run"],
                "wall_s": round(time.perf_counter() - t0, 1),
                "device": m["device"],
                "oracle_auc": oracle,
                "gap_to_oracle": None if oracle is None else oracle - m["test_auc"],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    header = "| data | model | AUC | AUC last | acc | params | s/epoch | epochs | wall s | AUC/oracle | gap |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        ratio = "" if r["oracle_auc"] is None else f"{r['test_auc'] / r['oracle_auc']:.4f}"
        gap = "" if r["gap_to_oracle"] is None else f"{r['gap_to_oracle']:+.4f}"
        print(
            f"| {r['data']} | {r['model']} | {r['test_auc']:.4f} | {r['test_auc_last']:.4f} | {r['test_acc']:.4f} "
            f"| {r['n_params']:,} | {r['s_per_epoch']:.1f} | {r['epochs']} | {r['wall_s']:.0f} | {ratio} | {gap} |"
        )
    for ds, (_, _, _, oracle) in datasets.items():
        if oracle is not None:
            print(f"{ds}: oracle AUC on test users {oracle:.4f}")
        else:
            print(f"{ds}: published " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
