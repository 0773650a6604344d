from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS, DataValidationError

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
