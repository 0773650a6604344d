"""Building data set versions: merge new interactions into the latest set, dedupe, keep the user split stable.

A data set version is a folder with ``interactions.csv`` (every answered row),
``train.csv`` and ``test.csv`` (split by user). A user keeps the side of the split
they were first put on, so the held-out users a model is judged on never leak
into training; new users go to the test side by a hash of their id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS, DataValidationError, validate

DATA_FILES = ("interactions.csv", "train.csv", "test.csv")
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
    return df.sort_values(["userID", "Timestamp", "assessmentItemID"], kind="stable").reset_index(drop=True)


def merge(parent_dir: Path | None, new: pd.DataFrame, test_share: float = DEFAULT_TEST_SHARE) -> MergeResult:
    """The parent set plus the new rows, deduplicated on (user, item, timestamp)."""
    if parent_dir is not None:
        old_train = read_csv(parent_dir / "train.csv")
        old_test = read_csv(parent_dir / "test.csv")
    else:
        old_train, old_test = _empty(), _empty()
    test_users = set(old_test["userID"])
    train_users = set(old_train["userID"])
    old = pd.concat([old_train, old_test], ignore_index=True)
    old_keys = pd.MultiIndex.from_frame(old[KEY])
    is_new = ~pd.MultiIndex.from_frame(new[KEY]).isin(old_keys)
    fresh = new[is_new]
    everything = _sort(pd.concat([old, fresh], ignore_index=True).drop_duplicates(subset=KEY, keep="first"))

    def goes_to_test(u: str) -> bool:
        if u in test_users:
            return True
        if u in train_users:
            return False
        return is_test_user(u, test_share)

    users = everything["userID"].unique()
    test_set = {u for u in users if goes_to_test(u)}
    in_test = everything["userID"].isin(test_set)
    return MergeResult(
        interactions=everything,
        train=everything[~in_test].reset_index(drop=True),
        test=everything[in_test].reset_index(drop=True),
        new_rows=len(new),
        added_rows=int(is_new.sum()),
    )


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
    """A first data set from a folder with train.csv and test.csv (e.g. the simulator's output)."""
    train = read_csv(src / "train.csv")
    test = read_csv(src / "test.csv")
    overlap = set(train["userID"]) & set(test["userID"])
    if overlap:
        raise DataValidationError(
            str(src), f"{len(overlap)} user(s) in both train.csv and test.csv, e.g. {min(overlap)!r}"
        )
    train = _sort(train[train["answerCode"] >= 0])
    test = _sort(test[test["answerCode"] >= 0])
    both = _sort(pd.concat([train, test], ignore_index=True))
    return write_dataset(MergeResult(both, train, test, len(both), len(both)), out)
