"""The canonical interaction table and its validation.

Every importer ends here, so a bad file fails with one clear message naming the
file, the row and the column instead of a traceback from deep inside pandas.
"""

from __future__ import annotations

import pandas as pd

COLUMNS: tuple[str, ...] = (
    "userID",
    "assessmentItemID",
    "testId",
    "answerCode",
    "Timestamp",
    "KnowledgeTag",
)
ITEM_COLUMNS: tuple[str, ...] = ("assessmentItemID", "testId", "KnowledgeTag")
ANSWER_TO_PREDICT = -1
VALID_ANSWERS = frozenset({-1, 0, 1})
# Answers are given by students using this system: anything outside these years is a broken clock or a
# broken export (a year-0001 timestamp would also overflow the nanosecond timestamps used downstream).
EARLIEST = pd.Timestamp("1970-01-01")
LATEST = pd.Timestamp("2200-01-01")


class DataValidationError(ValueError):
    """Raised for input that breaks the canonical schema; the message says where."""

    def __init__(self, source: str, message: str, row: int | None = None, column: str | None = None):
        self.source = source
        self.row = row
        self.column = column
        where = source
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


def _first_bad(mask: pd.Series) -> int | None:
    bad = mask.to_numpy().nonzero()[0]
    return int(bad[0]) if len(bad) else None


def validate(
    df: pd.DataFrame,
    source: str = "<data>",
    row_offset: int = 2,
    required: tuple[str, ...] = COLUMNS,
) -> pd.DataFrame:
    """Check and normalise a canonical interaction table.

    ``row_offset`` turns a 0-based frame position into the number a person sees:
    2 for a CSV with a header line (line 1 is the header). Returns a new frame
    with normalised dtypes: string ids, int8 answers, int64 tags, UTC-naive
    datetime timestamps.
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataValidationError(source, f"missing column(s) {missing}; expected {list(required)}")
    if len(df) == 0:
        raise DataValidationError(source, "no rows")
    df = df.reset_index(drop=True)
    out = df.loc[:, list(required)].copy()

    def row_of(i: int) -> int:
        return i + row_offset

    for col in ("userID", "assessmentItemID", "testId"):
        if col not in out:
            continue
        null = out[col].isna()
        if (i := _first_bad(null)) is not None:
            raise DataValidationError(source, "empty value", row_of(i), col)
        out[col] = out[col].astype(str).str.strip()
        empty = out[col] == ""
        if (i := _first_bad(empty)) is not None:
            raise DataValidationError(source, "empty value", row_of(i), col)

    if "answerCode" in out:
        codes = pd.to_numeric(out["answerCode"], errors="coerce")
        bad = codes.isna() | ~codes.isin(list(VALID_ANSWERS))
        if (i := _first_bad(bad)) is not None:
            raise DataValidationError(
                source, f"answerCode must be one of -1, 0, 1, got {df['answerCode'].iloc[i]!r}", row_of(i), "answerCode"
            )
        out["answerCode"] = codes.astype("int8")

    if "KnowledgeTag" in out:
        tags = pd.to_numeric(out["KnowledgeTag"], errors="coerce")
        bad = tags.isna() | (tags != tags.round())
        if (i := _first_bad(bad)) is not None:
            got = df["KnowledgeTag"].iloc[i]
            msg = f"KnowledgeTag must be an integer, got {got!r}"
            raise DataValidationError(source, msg, row_of(i), "KnowledgeTag")
        out["KnowledgeTag"] = tags.astype("int64")

    if "Timestamp" in out:
        raw = out["Timestamp"]
        ts = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        if (i := _first_bad(ts.isna())) is not None:
            raise DataValidationError(source, f"bad timestamp {raw.iloc[i]!r}", row_of(i), "Timestamp")
        naive = ts.dt.tz_localize(None)
        if (i := _first_bad((naive < EARLIEST) | (naive >= LATEST))) is not None:
            msg = f"timestamp {raw.iloc[i]!r} is outside {EARLIEST.year}-{LATEST.year - 1}"
            raise DataValidationError(source, msg, row_of(i), "Timestamp")
        out["Timestamp"] = naive.astype("datetime64[ns]")

    key = [c for c in ("userID", "assessmentItemID", "Timestamp") if c in out]
    if len(key) == 3:
        dup = out.duplicated(subset=key, keep="first")
        if (i := _first_bad(dup)) is not None:
            first = out[(out[key] == out.iloc[i][key]).all(axis=1)].index[0]
            raise DataValidationError(
                source,
                f"duplicated interaction (same userID, assessmentItemID, Timestamp as row {row_of(int(first))})",
                row_of(i),
            )
    return out.reset_index(drop=True)


def check_trainable(df: pd.DataFrame, source: str) -> None:
    """A training table a model can learn from: at least 2 rows and both correct and wrong answers."""
    if len(df) < 2:
        raise DataValidationError(source, f"{len(df)} row(s); training needs at least 2")
    labels = df["answerCode"].to_numpy()
    classes = sorted({int(a) for a in labels[labels >= 0]})
    if len(classes) < 2:
        what = (
            "no labelled answers"
            if not classes
            else f"every answer is {classes[0]} ({('wrong', 'correct')[classes[0]]})"
        )
        raise DataValidationError(source, f"{what}; training needs both correct and wrong answers", column="answerCode")


def check_disjoint_users(frames: dict[str, tuple[str, pd.DataFrame]]) -> None:
    """No student in two of ``frames`` (name -> (source, table)): a shared student leaks into evaluation.

    Names the first shared user in sorted order, so the message is the same on every run.
    """
    names = list(frames)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            shared = set(frames[a][1]["userID"].unique()) & set(frames[b][1]["userID"].unique())
            if shared:
                first = min(shared)
                more = f" (and {len(shared) - 1} more)" if len(shared) > 1 else ""
                raise DataValidationError(
                    frames[b][0], f"user {first!r} is in both {a} and {b}{more}; the sets must not share students"
                )
