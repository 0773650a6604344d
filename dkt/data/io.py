"""Importers: the canonical CSV and the 3-line KT benchmark format, both into one table."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from dkt.data.schema import COLUMNS, DataValidationError, check_disjoint_users, check_trainable, validate

DataFormat = Literal["csv", "kt3"]
# KT benchmark files carry no clock; answers are spaced evenly so elapsed-time features stay defined.
KT3_EPOCH = pd.Timestamp("2000-01-01")
KT3_STEP = pd.Timedelta(seconds=60)


SNIFF_BYTES = 64 * 1024


def check_text_file(path: Path) -> None:
    """Refuse a missing, unreadable or binary file with one clear message (pandas would give a traceback)."""
    if not path.exists():
        raise DataValidationError(str(path), "file not found")
    if not path.is_file():
        raise DataValidationError(str(path), "not a file")
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise DataValidationError(str(path), f"cannot read: {exc.strerror or exc}") from None
    # Text never holds NUL bytes; a model file or an archive passed by mistake almost always does.
    if (nul := head.find(b"\x00")) >= 0:
        raise DataValidationError(str(path), f"binary file (NUL byte at offset {nul}), not text")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataValidationError:
    return DataValidationError(str(path), f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded)")


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a canonical interaction CSV and validate it."""
    path = Path(path)
    check_text_file(path)
    try:
        raw = pd.read_csv(path, dtype={"userID": str, "assessmentItemID": str, "testId": str}, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(str(path), "empty file") from None
    except pd.errors.ParserError as exc:
        raise DataValidationError(str(path), f"not a valid CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    return validate(raw, source=str(path))


def _parse_ints(text: str, source: str, line: int, what: str) -> list[int]:
    parts = [p.strip() for p in text.strip().split(",")]
    if parts and parts[-1] == "":  # trailing comma is part of the published format
        parts = parts[:-1]
    try:
        return [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise DataValidationError(source, f"{what} must be integers, got {bad!r}", row=line) from None


def read_kt3(path: str | Path) -> pd.DataFrame:
    """Read the 3-line KT format (length / skill ids / answers per student) into the canonical table.

    Skills become ``KnowledgeTag`` and also the item (these benchmarks have one item
    per skill); students are numbered by their order in the file, prefixed with the
    file name so that train and test users never collide.
    """
    path = Path(path)
    check_text_file(path)
    source = str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataValidationError(source, "empty file")
    if len(lines) % 3:
        raise DataValidationError(source, f"{len(lines)} lines is not a multiple of 3 (length / skills / answers)")
    users, skills, answers, positions = [], [], [], []
    for s in range(0, len(lines), 3):
        n = _parse_ints(lines[s], source, s + 1, "sequence length")
        if len(n) != 1 or n[0] <= 0:
            raise DataValidationError(source, f"expected one positive sequence length, got {lines[s]!r}", row=s + 1)
        sk = _parse_ints(lines[s + 1], source, s + 2, "skill ids")
        an = _parse_ints(lines[s + 2], source, s + 3, "answers")
        if len(sk) != n[0] or len(an) != n[0]:
            raise DataValidationError(
                source, f"length line says {n[0]} but found {len(sk)} skill ids and {len(an)} answers", row=s + 1
            )
        if bad := [a for a in an if a not in (0, 1)]:
            raise DataValidationError(source, f"answers must be 0 or 1, got {bad[0]}", row=s + 3)
        if bad := [k for k in sk if k < 0]:
            raise DataValidationError(source, f"skill ids must be non-negative, got {bad[0]}", row=s + 2)
        users.extend([s // 3] * n[0])
        skills.extend(sk)
        answers.extend(an)
        positions.extend(range(n[0]))
    skill = np.asarray(skills)
    item = np.char.add(np.char.add("A", np.char.zfill(skill.astype(str), 6)), "001")
    df = pd.DataFrame(
        {
            "userID": np.char.add(f"{path.stem}-", np.asarray(users).astype(str)),
            "assessmentItemID": item,
            "testId": np.char.add(np.char.add("A", np.char.zfill(skill.astype(str), 6)), "000"),
            "answerCode": np.asarray(answers, dtype="int8"),
            "Timestamp": KT3_EPOCH + KT3_STEP * np.asarray(positions),
            "KnowledgeTag": skill.astype("int64"),
        }
    )
    return df.loc[:, list(COLUMNS)]


def load_interactions(path: str | Path, fmt: DataFormat = "csv") -> pd.DataFrame:
    """Load one interaction file in either supported format."""
    if fmt == "csv":
        return read_csv(path)
    if fmt == "kt3":
        return read_kt3(path)
    raise ValueError(f"unknown data format {fmt!r}; expected 'csv' or 'kt3'")


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of an interaction table: equal data, equal fingerprint, whatever the file."""
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(df.loc[:, list(COLUMNS)], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class RunFiles:
    """The input files of one training run, loaded and checked (before any model code is imported)."""

    train: pd.DataFrame
    test: pd.DataFrame
    valid: pd.DataFrame | None
    sources: dict[str, str]  # flag -> path, e.g. {"--train-file": "data/train.csv"}


def load_run_files(
    train_file: str | Path, test_file: str | Path, valid_file: str | Path | None, fmt: DataFormat = "csv"
) -> RunFiles:
    """Load a run's files and check what training needs: a trainable train file and no shared students."""
    train = load_interactions(train_file, fmt)
    check_trainable(train, str(train_file))
    frames = {"--train-file": (str(train_file), train)}
    valid = None
    if valid_file:
        valid = load_interactions(valid_file, fmt)
        frames["--valid-file"] = (str(valid_file), valid)
    test = load_interactions(test_file, fmt)
    frames["--test-file"] = (str(test_file), test)
    # A student in two sets makes evaluation measure memory, not prediction.
    check_disjoint_users(frames)
    return RunFiles(train, test, valid, {flag: src for flag, (src, _) in frames.items()})
