"""Batch inference: P(correct) for every row to predict (answerCode -1).

    dkt infer --model-dir models/local/lstm --data-file data/sim/test_to_predict.csv \
        --output predictions.csv

(``python inference.py ...`` runs this same command.)

Writes ``id,prediction``: ``id`` numbers the answerCode -1 rows 0, 1, 2, ... in file
order (the submission format of the original competition), ``prediction`` is the
probability that the answer will be correct, given the rows of that user before it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dkt.bundle import BundleError
from dkt.cli import Parser

if TYPE_CHECKING:
    import pandas as pd


def predict_file(model_dir: Path, data_file: Path, device: str = "auto") -> pd.DataFrame:
    # torch, pandas and the models (3 CPU-s) only once the arguments are good: `dkt infer --help` needs none.
    import numpy as np
    import pandas as pd

    from dkt.data.io import read_csv
    from dkt.data.schema import ANSWER_TO_PREDICT, DataValidationError

    df = read_csv(data_file)
    targets = np.flatnonzero(df["answerCode"].to_numpy() == ANSWER_TO_PREDICT)
    if len(targets) == 0:
        raise DataValidationError(str(data_file), "no rows with answerCode -1 to predict")
    # torch and the models (2.5 CPU-s) once the data is good: a missing or bad file is refused without them.
    from dkt.predictor import load_predictor
    from dkt.training import resolve_device

    prob = load_predictor(model_dir, device=str(resolve_device(device))).predict_rows(df)
    return pd.DataFrame({"id": np.arange(len(targets)), "prediction": prob[targets]})


def training_error() -> type[Exception]:
    """Its module imports torch (2.5 CPU-s): imported only when an error is not one of the data's or the bundle's."""
    from dkt.training import TrainingError

    return TrainingError


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="dkt infer", description=__doc__)
    p.add_argument("--model-dir", required=True, type=Path, help="a model bundle written by dkt train")
    p.add_argument("--data-file", required=True, type=Path, help="canonical CSV with answerCode -1 rows")
    p.add_argument("--output", required=True, type=Path, help="where to write id,prediction")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    args = p.parse_args(argv)
    from dkt.data.schema import DataValidationError  # pandas: predict_file reads the table with it anyway

    try:
        out = predict_file(args.model_dir, args.data_file, args.device)
    except (DataValidationError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except training_error() as exc:  # evaluated only when the clause above did not match
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    out.to_csv(tmp, index=False, float_format="%.6f")
    tmp.replace(args.output)
    print(f"wrote {len(out):,} predictions to {args.output}")
    return 0
