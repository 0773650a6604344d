"""What the benches that score trained bundles on a pair of 3-line files share (bench/ensemble_mean_bench.py,
bench/position_auc.py): NAME=BUNDLE_DIR arguments, the pair and --threads, checked the same way, and each bundle loaded
through the loader serving uses (``dkt.predictor.load_predictor``). A bad argument is one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from dkt.bundle import BundleError
from dkt.data.io import load_run_files
from dkt.predictor import Predictor, load_predictor

ASSIST2009 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "assist2009"


def named_bundle(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=BUNDLE_DIR")
    if not (Path(folder) / "bundle.json").is_file():
        raise argparse.ArgumentTypeError(f"{folder}: not a model bundle (no bundle.json)")
    return name, Path(folder)


def bundle_parser(description: str, bundles_help: str) -> argparse.ArgumentParser:
    """A parser of NAME=BUNDLE_DIR arguments, --train and --test (ASSISTments 2009's by default) and --threads."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=named_bundle, help=bundles_help)
    parser.add_argument("--train", type=Path, default=ASSIST2009 / "train.csv", help="3-line train file")
    parser.add_argument("--test", type=Path, default=ASSIST2009 / "test.csv", help="3-line test file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser


def read_test(parser: argparse.ArgumentParser, args: argparse.Namespace) -> pd.DataFrame | None:
    """The pair's test rows, after --threads is checked (exit 2) and set; None, with one error line, when a file of
    the pair is missing."""
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    for path in (args.train, args.test):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return load_run_files(args.train, args.test, None, "kt3").test


def load_bundle(name: str, folder: Path) -> Predictor | None:
    """The bundle's predictor; None, with one error line naming it, when it cannot be loaded."""
    try:
        return load_predictor(folder)
    except BundleError as exc:
        print(f"error: {name}={folder}: {exc}", file=sys.stderr)
        return None
