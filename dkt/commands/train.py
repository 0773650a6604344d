"""Train a DKT model and write a model bundle.

    dkt train --config config/lstm.json --train-file data/sim/train.csv \
        --test-file data/sim/test.csv --output-dir models/local/lstm

(``python train.py ...`` runs this same command.)

The flags and the keys of DIR/metrics.json are a public interface (see README).
Bad input (a file, a flag, data that cannot train a model, a model that does not load and score)
ends in one line ``error: ...`` on stderr and exit 2, with no bundle.json written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dkt.bundle import BundleError
from dkt.cli import Parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="dkt train", description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="experiment config, e.g. config/lstm.json")
    p.add_argument("--train-file", required=True, type=Path, help="training interactions")
    p.add_argument("--valid-file", type=Path, help="validation interactions (default: hold out users of --train-file)")
    p.add_argument("--test-file", required=True, type=Path, help="test interactions, scored for metrics.json")
    p.add_argument("--data-format", choices=["csv", "kt3"], default="csv", help="csv (canonical) or kt3 (default: csv)")
    p.add_argument("--output-dir", required=True, type=Path, help="where the model bundle is written")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the config's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("--seed", type=int, default=42, help="random seed; same seed, same data, same model (default 42)")
    p.add_argument("--model-version", help="version recorded in the bundle (default: UTC time)")
    p.add_argument("--data-version", help="data version recorded in the bundle (default: data fingerprint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--init-from", type=Path, help="a model bundle whose weights seed this one when kind and parameters match"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    # Checked before hours of training, not when the first file is written.
    if args.output_dir.exists() and not args.output_dir.is_dir():
        print(f"error: --output-dir {args.output_dir}: exists and is not a folder", file=sys.stderr)
        return 2
    # pandas (0.8 s) once the flags are good: `dkt train --help` and a flag mistake need none.
    from dkt.data.io import load_run_files
    from dkt.data.schema import DataValidationError

    try:
        # The data first: checking it needs only pandas, so a bad file is refused in a second, before
        # the model code (torch) is even imported.
        files = load_run_files(args.train_file, args.test_file, args.valid_file, args.data_format)
    except DataValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dkt.config import ConfigError, load_config
    from dkt.experiment import run, split_run_files, summary_line
    from dkt.training import TrainingError

    try:
        config = load_config(args.config)
        data = split_run_files(files, config.train.valid_ratio, args.seed)
        metrics = run(
            config,
            data,
            args.output_dir,
            epochs=args.epochs,
            device=args.device,
            seed=args.seed,
            model_version=args.model_version,
            data_version=args.data_version,
            config_dir=args.config.parent,
            progress=not args.no_progress,
            init_from=args.init_from,
        )
    except (ConfigError, DataValidationError, BundleError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output folder cannot be written (permissions, disk full)
        print(f"error: {args.output_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(summary_line(metrics))
    return 0
