from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dkt.data.io import fingerprint, load_interactions, load_run_files, read_csv, read_kt3
from dkt.data.schema import DataValidationError, validate
from tests.conftest import ASSIST2009


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "seq.csv"
    p.write_text(text)
    return p


def test_kt3_with_trailing_commas(tmp_path: Path) -> None:
    df = read_kt3(write(tmp_path, "3\n5,5,7,\n1,0,1,\n2\n7,8\n0,0\n"))
    assert len(df) == 5
    assert df["userID"].nunique() == 2
    assert df["KnowledgeTag"].tolist() == [5, 5, 7, 7, 8]
    assert df["answerCode"].tolist() == [1, 0, 1, 0, 0]
    # Same skill, same item; time moves forward within a student.
    assert df["assessmentItemID"].iloc[0] == df["assessmentItemID"].iloc[1] == "A000005001"
    assert df.groupby("userID")["Timestamp"].is_monotonic_increasing.all()
    validate(df, "kt3")  # the importer's output is a valid canonical table


@pytest.mark.parametrize(
    ("text", "row", "words"),
    [
        ("3\n5,5\n1,0\n", 1, "length line says 3 but found 2 skill ids and 2 answers"),
        ("2\n5,x\n1,0\n", 2, "skill ids must be integers, got 'x'"),
        ("2\n5,6\n1,2\n", 3, "answers must be 0 or 1, got 2"),
        ("two\n5,6\n1,0\n", 1, "sequence length must be integers"),
        ("0\n5\n1\n", 1, "expected one positive sequence length"),
    ],
)
def test_kt3_errors_name_the_line(tmp_path: Path, text: str, row: int, words: str) -> None:
    with pytest.raises(ValueError) as err:
        read_kt3(write(tmp_path, text))
    assert err.value.row == row  # type: ignore[attr-defined]
    assert words in str(err.value)


def test_kt3_line_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of 3"):
        read_kt3(write(tmp_path, "2\n5,6\n"))


@pytest.mark.skipif(not ASSIST2009.is_dir(), reason="shared assist2009 data not present")
def test_assist2009_matches_its_readme() -> None:
    train = load_interactions(ASSIST2009 / "train.csv", "kt3")
    test = load_interactions(ASSIST2009 / "test.csv", "kt3")
    assert (train["userID"].nunique(), len(train)) == (2921, 224218)
    assert (test["userID"].nunique(), len(test)) == (1230, 101419)
    assert set(train["userID"]).isdisjoint(test["userID"])
    assert train["KnowledgeTag"].between(1, 110).all()


def test_fingerprint_depends_on_content(sim_dir: Path) -> None:
    df = load_interactions(sim_dir / "train.csv")
    same = load_interactions(sim_dir / "train.csv")
    assert fingerprint(df) == fingerprint(same)
    changed = df.copy()
    changed.loc[0, "answerCode"] = 1 - changed.loc[0, "answerCode"]
    assert fingerprint(changed) != fingerprint(df)


@pytest.mark.parametrize("reader", [read_csv, read_kt3])
def test_binary_and_non_utf8_files_are_refused_in_one_line(tmp_path: Path, reader: Callable[[Path], object]) -> None:
    binary = tmp_path / "weights.pt"
    binary.write_bytes(b"\x80\x02}q\x00(X\x06\x00\x00\x00lstm.w")
    with pytest.raises(DataValidationError, match=r"weights\.pt: binary file \(NUL byte at offset 4\), not text"):
        reader(binary)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("3\n5,5,7\n1,0,1\n# élève\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"latin1\.csv: not UTF-8 text \(byte 0xe9 cannot be decoded\)"):
        reader(latin1)
    with pytest.raises(DataValidationError, match=r": not a file"):
        reader(tmp_path)


def test_run_files_are_checked_together(tmp_path: Path) -> None:
    header = "userID,assessmentItemID,testId,answerCode,Timestamp,KnowledgeTag\n"
    train = tmp_path / "train.csv"
    train.write_text(header + "a,A1,T1,1,2020-01-01 00:00:00,1\nb,A1,T1,0,2020-01-01 00:01:00,1\n")
    test = tmp_path / "test.csv"
    test.write_text(header + "c,A1,T1,1,2020-01-01 00:00:00,1\n")
    files = load_run_files(train, test, None)
    assert files.valid is None and files.sources == {"--train-file": str(train), "--test-file": str(test)}
    test.write_text(header + "b,A1,T1,1,2020-01-02 00:00:00,1\n")
    with pytest.raises(DataValidationError, match="user 'b' is in both --train-file and --test-file"):
        load_run_files(train, test, None)
