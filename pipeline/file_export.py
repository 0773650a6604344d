"""An exporter for interactions that arrive as CSV files instead of through the client database.

    dkt file-export --source DIR_OR_FILE --since WATERMARK --out FILE

Same contract as ``dkt client export-interactions``: every answered row after
``--since`` (here a timestamp; all rows when absent), canonical columns, and the new
cursor printed as ``watermark: <value>`` on stdout. Point
``DKT_EXPORT_CMD`` at it (``DKT_EXPORT_CMD="dkt file-export --source inbox/"``)
to feed the update DAG from files dropped by another system.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from dkt.cli import Parser
from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS, DataValidationError
from pipeline.dataset import TIME_FORMAT


def export(source: Path, since: str, out: Path) -> tuple[int, str]:
    files = sorted(source.glob("*.csv")) if source.is_dir() else [source]
    frames = [read_csv(f) for f in files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    if since and len(df):
        try:
            cut = pd.Timestamp(since)
        except ValueError:
            raise DataValidationError("--since", f"not a timestamp: {since!r}") from None
        df = df[df["Timestamp"] > cut]
    df = df.sort_values(["Timestamp", "userID"], kind="stable")
    tmp = out.with_name(f".{out.name}.tmp")
    df.loc[:, list(COLUMNS)].to_csv(tmp, index=False, date_format=TIME_FORMAT)
    tmp.replace(out)
    watermark = df["Timestamp"].max().strftime(TIME_FORMAT) if len(df) else since
    return len(df), watermark


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="dkt file-export", description=__doc__)
    p.add_argument("--source", type=Path, required=True, help="a canonical CSV or a folder of them")
    p.add_argument("--since", default="", help="export rows strictly after this timestamp")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        n, watermark = export(args.source, args.since, args.out)
    except DataValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {n} row(s) to {args.out}", file=sys.stderr)
    print(f"watermark: {watermark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
