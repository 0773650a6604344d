from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS, DataValidationError, check_disjoint_users, check_trainable

GOOD = """userID,assessmentItemID,testId,answerCode,Timestamp,KnowledgeTag
0,A060001001,A060000001,1,2020-03-24 00:17:11,7224
0,A060001002,A060000001,0,2020-03-24 00:17:14,7225
1,A060001001,A060000001,-1,2020-03-25 10:00:00,7224
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "interactions.csv"
    p.write_text(text)
    return p


def test_good_file_is_normalised(tmp_path: Path) -> None:
    df = read_csv(write(tmp_path, GOOD))
    assert list(df.columns) == list(COLUMNS)
    assert df["answerCode"].tolist() == [1, 0, -1]
    assert df["userID"].tolist() == ["0", "0", "1"]
    assert str(df["Timestamp"].dtype) == "datetime64[ns]"
    assert df["KnowledgeTag"].dtype == "int64"


@pytest.mark.parametrize(
    ("old", "new", "row", "column", "words"),
    [
        ("0,A060001002,A060000001,0,", "0,A060001002,A060000001,2,", 3, "answerCode", "one of -1, 0, 1"),
        ("0,A060001002,A060000001,0,", "0,A060001002,A060000001,yes,", 3, "answerCode", "one of -1, 0, 1"),
        ("2020-03-24 00:17:14", "2020-13-45 99:00:00", 3, "Timestamp", "bad timestamp"),
        ("2020-03-24 00:17:14", "yesterday", 3, "Timestamp", "bad timestamp"),
        (",7225", ",skill", 3, "KnowledgeTag", "must be an integer"),
        ("0,A060001002", ",A060001002", 3, "userID", "empty value"),
    ],
)
def test_bad_values_name_file_row_and_column(
    tmp_path: Path, old: str, new: str, row: int, column: str, words: str
) -> None:
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(DataValidationError) as err:
        read_csv(path)
    assert err.value.row == row
    assert err.value.column == column
    assert str(path) in str(err.value)
    assert words in str(err.value)


def test_missing_column(tmp_path: Path) -> None:
    text = "\n".join(",".join(line.split(",")[:5]) for line in GOOD.splitlines())
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['KnowledgeTag'\]"):
        read_csv(write(tmp_path, text))


def test_duplicated_rows_point_at_both(tmp_path: Path) -> None:
    lines = GOOD.splitlines()
    with pytest.raises(DataValidationError, match="as row 2") as err:
        read_csv(write(tmp_path, "\n".join([*lines, lines[1]])))
    assert err.value.row == 5


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        read_csv(tmp_path / "nope.csv")
    with pytest.raises(DataValidationError, match="empty file"):
        read_csv(write(tmp_path, ""))
    with pytest.raises(DataValidationError, match="no rows"):
        read_csv(write(tmp_path, GOOD.splitlines()[0] + "\n"))


def test_timezone_aware_timestamps_become_utc(tmp_path: Path) -> None:
    df = read_csv(write(tmp_path, GOOD.replace("2020-03-24 00:17:11", "2020-03-24T09:17:11+09:00")))
    assert df["Timestamp"].iloc[0] == pd.Timestamp("2020-03-24 00:17:11")


@pytest.mark.parametrize("stamp", ["0001-01-09 06:32:18", "1969-12-31 23:59:59", "2200-01-01 00:00:00", "9999-12-31"])
def test_timestamps_outside_the_plausible_years_are_refused_with_the_row(tmp_path: Path, stamp: str) -> None:
    path = write(tmp_path, GOOD.replace("2020-03-24 00:17:14", stamp))
    with pytest.raises(DataValidationError) as err:
        read_csv(path)
    assert (err.value.row, err.value.column) == (3, "Timestamp")
    assert f"timestamp {stamp!r} is outside 1970-2199" in str(err.value)


def test_extra_columns_are_accepted(tmp_path: Path) -> None:
    # The client's export may add ResponseTime (and the simulator p_true): the canonical table ignores them.
    text = GOOD.replace("KnowledgeTag\n", "KnowledgeTag,ResponseTime\n").replace(",7224\n", ",7224,12.5\n")
    text = text.replace(",7225\n", ",7225,\n")
    df = read_csv(write(tmp_path, text))
    assert list(df.columns) == list(COLUMNS) and len(df) == 3


def frame(users: list[str], answers: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"userID": users, "answerCode": answers})


@pytest.mark.parametrize(
    ("df", "words"),
    [
        (frame(["u1"], [1]), "1 row(s); training needs at least 2"),
        (frame(["u1", "u2", "u2"], [1, 1, 1]), "every answer is 1 (correct)"),
        (frame(["u1", "u2"], [0, 0]), "every answer is 0 (wrong)"),
        (frame(["u1", "u2"], [-1, -1]), "no labelled answers"),
    ],
)
def test_untrainable_tables_are_refused(df: pd.DataFrame, words: str) -> None:
    with pytest.raises(DataValidationError, match=re.escape(words)):
        check_trainable(df, "train.csv")


def test_trainable_table_passes() -> None:
    check_trainable(frame(["u1", "u1", "u2"], [1, 0, -1]), "train.csv")


def test_shared_students_are_named_first_in_sorted_order() -> None:
    frames = {
        "--train-file": ("t.csv", frame(["u3", "u1", "u9", "u7"], [0] * 4)),
        "--valid-file": ("v.csv", frame(["u5"], [1])),
        "--test-file": ("x.csv", frame(["u9", "u7", "u2"], [1] * 3)),
    }
    with pytest.raises(DataValidationError) as err:
        check_disjoint_users(frames)
    assert str(err.value) == "x.csv: user 'u7' is in both --train-file and --test-file (and 1 more); " + (
        "the sets must not share students"
    )
    check_disjoint_users({k: v for k, v in frames.items() if k != "--test-file"})  # disjoint: no error
