"""Building data set versions: merge new interactions into the latest set, dedupe, keep the user split stable.

What a consumer sees of a data version is a folder with ``interactions.csv`` (every answered row),
``train.csv`` and ``test.csv`` (split by user). A user keeps the side of the split
they were first put on, so the held-out users a model is judged on never leak
into training; new users go to the test side by a hash of their id.

Stored, a version is a list of Parquet partitions (docs/pipeline.md, Versioned storage): its parent's,
by reference, and one of its own with only the rows it added. A partition holds the canonical columns
plus ``test`` (the row's user is on the test side), so that the split travels with the rows. The
version's table is every partition's rows in the canonical order (``_sort``); ``tables`` splits it
into the three CSVs' frames, the same rows, order and dtypes the CSV versions had. Versions written
before partitions (the three CSVs themselves) are still read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS, DataValidationError, validate

DATA_FILES = ("interactions.csv", "train.csv", "test.csv")
TEST = "test"  # the partition column: the row's user is on the test side of the split
SORT = ["userID", "Timestamp", "assessmentItemID"]
KEY = ["userID", "assessmentItemID", "Timestamp"]
DEFAULT_TEST_SHARE = 0.1
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass
class MergeResult:
    interactions: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    new_rows: int  # rows in the export
    added_rows: int  # rows that were not already in the parent set

    @property
    def rows(self) -> int:
        return len(self.interactions)


def is_test_user(user: str, share: float) -> bool:
    """Stable split: the same user id lands on the same side on every machine and run."""
    h = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big")
    return (h % 10_000) < share * 10_000


def read_new_interactions(path: Path) -> pd.DataFrame:
    """An export of new interactions: canonical columns (extra ones ignored), answered rows only.

    Duplicates inside one export are tolerated (an exporter retried mid-way); they
    are dropped here, so the rule "one row per user, item and timestamp" holds.
    """
    try:
        raw = pd.read_csv(path, dtype={"userID": str, "assessmentItemID": str, "testId": str}, low_memory=False)
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame(columns=list(COLUMNS))
    if len(raw) == 0:
        missing = [c for c in COLUMNS if c not in raw.columns]
        if missing:
            raise DataValidationError(str(path), f"missing column(s) {missing}; expected {list(COLUMNS)}")
        return _empty()
    raw = raw.drop_duplicates(subset=[c for c in KEY if c in raw.columns])
    df = validate(raw, source=str(path))
    # Stored files keep whole seconds; flooring here makes a re-export compare equal to what was stored.
    df["Timestamp"] = df["Timestamp"].dt.floor("s")
    df = df.drop_duplicates(subset=KEY, keep="first")
    return df[df["answerCode"] >= 0].reset_index(drop=True)


def _empty() -> pd.DataFrame:
    return validate(
        pd.DataFrame(
            [
                {
                    "userID": "x",
                    "assessmentItemID": "A000000001",
                    "testId": "A000000000",
                    "answerCode": 0,
                    "Timestamp": "2000-01-01 00:00:00",
                    "KnowledgeTag": 0,
                }
            ]
        ),
        "<empty>",
    ).iloc[0:0]


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(SORT, kind="stable").reset_index(drop=True)


def write_dataset(result: MergeResult, out: Path) -> dict[str, int]:
    """Write the three CSVs atomically (each via a temp file); returns rows per file."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, df in (("interactions.csv", result.interactions), ("train.csv", result.train), ("test.csv", result.test)):
        tmp = out / f".{name}.tmp"
        df.loc[:, list(COLUMNS)].to_csv(tmp, index=False, date_format=TIME_FORMAT)
        tmp.replace(out / name)
        rows[name] = len(df)
    return rows


def import_initial(src: Path, out: Path) -> dict[str, int]:
    """A first data set's three CSVs from a folder with train.csv and test.csv (e.g. the simulator's output)."""
    return write_tables(_sort(initial_rows(src)), out)


# -- Parquet partitions ----------------------------------------------------------------------------------
def _schema() -> Any:
    import pyarrow as pa  # only the data side needs it: the inference image does without

    # Whole-second timestamps: what the CSV versions stored. No pandas metadata in the file, so that the same rows
    # give the same bytes (a retried publish recognises its own upload by sha256).
    return pa.schema(
        [
            ("userID", pa.string()),
            ("assessmentItemID", pa.string()),
            ("testId", pa.string()),
            ("answerCode", pa.int8()),
            ("Timestamp", pa.timestamp("s")),
            ("KnowledgeTag", pa.int64()),
            (TEST, pa.bool_()),
        ]
    )


def _canonical_order(table: Any) -> Any:
    """``_sort``'s order, by Arrow (many times faster than pandas on millions of string keys). Arrow sorts strings
    by UTF-8 bytes, which is Unicode code point order, pandas' order; (user, item, time) is unique, so there are
    no ties for stability to decide."""
    import pyarrow.compute as pc

    return table.take(pc.sort_indices(table, sort_keys=[(c, "ascending") for c in SORT]))


def write_part(df: pd.DataFrame, path: Path) -> dict[str, int]:
    """Write canonical rows with their ``test`` flag as one partition (atomically); returns its row counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {c: df[c].to_numpy() for c in COLUMNS}
    cols["Timestamp"] = df["Timestamp"].to_numpy().astype("datetime64[s]")
    cols[TEST] = df[TEST].to_numpy(dtype=bool)
    table = _canonical_order(pa.Table.from_pydict(cols, schema=_schema()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Sorted by user, in row groups of 256k rows: a reader that wants a few users skips the other groups.
    pq.write_table(table, tmp, compression="zstd", row_group_size=256 * 1024)
    tmp.replace(path)
    test = int(cols[TEST].sum())
    return {"rows": len(df), "train_rows": len(df) - test, "test_rows": test}


def _read_table(paths: Sequence[Path], columns: Sequence[str] | None, users: Iterable[str] | None) -> Any:
    """The partitions' rows as one Arrow table in the canonical order (see ``read_parts``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = list(columns) if columns is not None else [*COLUMNS, TEST]
    read = list(dict.fromkeys([*want, *SORT]))
    chosen = sorted(set(users)) if users is not None else None
    if chosen is not None and not chosen:
        paths = []  # nobody asked for: no rows (an "in" filter cannot be empty)
    filters = [("userID", "in", chosen)] if chosen else None
    tables = [pq.read_table(p, columns=read, filters=filters, schema=_schema()) for p in paths]
    table = pa.concat_tables(tables) if tables else _schema().empty_table().select(read)
    return _canonical_order(table).select(want)


def read_parts(
    paths: Sequence[Path], columns: Sequence[str] | None = None, users: Iterable[str] | None = None
) -> pd.DataFrame:
    """The rows of every partition in ``paths`` in the canonical order and dtypes, with the ``test`` flag.

    ``columns``: only these (read faster); ``users``: only these students' rows (row groups of others skipped)."""
    df = _read_table(paths, columns, users).to_pandas()
    kinds = _empty().dtypes
    for c in df.columns:
        if c in kinds:
            df[c] = df[c].astype(kinds[c])
    return df


def write_version_csvs(paths: Sequence[Path], out: Path) -> dict[str, int]:
    """The three CSVs of the version made of these partitions, byte for byte what ``write_dataset`` writes.

    Arrow's CSV writer (several times faster than pandas on millions of rows) with no quoting matches pandas'
    output for these columns; a value that would need quotes (a comma in an id) makes it refuse, and then pandas
    writes the files."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    table = _read_table(paths, None, None)
    test = table.column(TEST)
    parts = {"interactions.csv": table, "train.csv": table.filter(pc.invert(test)), "test.csv": table.filter(test)}
    out.mkdir(parents=True, exist_ok=True)
    header = (",".join(COLUMNS) + "\n").encode()
    try:
        for name, t in parts.items():
            tmp = out / f".{name}.tmp"
            with tmp.open("wb") as f:
                f.write(header)
                opts = pcsv.WriteOptions(include_header=False, quoting_style="none")
                pcsv.write_csv(t.select(list(COLUMNS)), f, opts)
            tmp.replace(out / name)
    except pa.ArrowInvalid:
        return write_tables(read_parts(paths), out)
    return {name: t.num_rows for name, t in parts.items()}


def tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """interactions, train and test of a version's rows (``read_parts``' output): the three CSVs' frames."""
    test = df[TEST].to_numpy(dtype=bool)
    every = df.loc[:, list(COLUMNS)]
    return every, every[~test].reset_index(drop=True), every[test].reset_index(drop=True)


def write_tables(df: pd.DataFrame, out: Path) -> dict[str, int]:
    """The three CSVs of a version's rows, as the CSV versions held them."""
    every, train, test = tables(df)
    return write_dataset(MergeResult(every, train, test, len(every), len(every)), out)


def with_flag(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """One table of a train and a test frame, each row flagged with its side."""
    return pd.concat([train.assign(**{TEST: False}), test.assign(**{TEST: True})], ignore_index=True)


@dataclass
class NewRows:
    fresh: pd.DataFrame  # the export's rows not in the parent, with their ``test`` flag
    new_rows: int  # rows in the export
    added_rows: int


def new_part(old: pd.DataFrame, new: pd.DataFrame, test_share: float = DEFAULT_TEST_SHARE) -> NewRows:
    """The rows of ``new`` that ``old`` (the parent's rows, at least those of ``new``'s users, with ``test``)
    lacks, deduplicated on (user, item, timestamp); a user keeps their side, a new user is split by hash."""
    is_new = ~pd.MultiIndex.from_frame(new[KEY]).isin(pd.MultiIndex.from_frame(old[KEY]))
    fresh = new[is_new].drop_duplicates(subset=KEY, keep="first").reset_index(drop=True)
    side = old.drop_duplicates("userID")
    known = dict(zip(side["userID"], side[TEST].to_numpy(dtype=bool), strict=True))
    flag = {u: known[u] if u in known else is_test_user(u, test_share) for u in fresh["userID"].unique()}
    fresh[TEST] = fresh["userID"].map(flag).astype(bool)
    return NewRows(fresh, len(new), int(is_new.sum()))


def old_rows(paths: Sequence[Path], new: pd.DataFrame) -> pd.DataFrame:
    """What ``new_part`` needs of a parent stored as partitions: the keys and side of ``new``'s students' rows."""
    return read_parts(paths, columns=[*KEY, TEST], users=new["userID"].unique())


def initial_rows(src: Path) -> pd.DataFrame:
    """A first data set's rows, flagged, from a folder with train.csv and test.csv (e.g. the simulator's output)."""
    train = read_csv(src / "train.csv")
    test = read_csv(src / "test.csv")
    overlap = set(train["userID"]) & set(test["userID"])
    if overlap:
        raise DataValidationError(
            str(src), f"{len(overlap)} user(s) in both train.csv and test.csv, e.g. {min(overlap)!r}"
        )
    return with_flag(train[train["answerCode"] >= 0], test[test["answerCode"] >= 0])
