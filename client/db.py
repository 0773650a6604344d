"""The client's SQLite database: students and their answers, each answer committed before the page answers.

``interactions.id`` is an AUTOINCREMENT key: ids only grow and are never reused,
and SQLite serialises writers, so an answer with a larger id is always committed
after one with a smaller id. That id is the export watermark.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from dkt.data.schema import COLUMNS

SCHEMA = """
CREATE TABLE IF NOT EXISTS students (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nickname TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    current_item TEXT,
    insights TEXT
);
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    student_id INTEGER NOT NULL REFERENCES students(id),
    userID TEXT NOT NULL,
    assessmentItemID TEXT NOT NULL,
    testId TEXT NOT NULL,
    answerCode INTEGER NOT NULL CHECK (answerCode IN (0, 1)),
    Timestamp TEXT NOT NULL,
    KnowledgeTag INTEGER NOT NULL,
    given TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_student ON interactions(student_id, id);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)  # autocommit; explicit transactions below
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (several gunicorn workers)
    conn.execute("PRAGMA synchronous=FULL")  # an answered page means the answer is on disk
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def init(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"  # the canonical Timestamp column, naive UTC


def now() -> str:
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


def user_id(student_id: int) -> str:
    return f"web-{student_id:06d}"


def get_or_create_student(conn: sqlite3.Connection, nickname: str) -> int:
    conn.execute("INSERT OR IGNORE INTO students (nickname, created_at) VALUES (?, ?)", (nickname, now()))
    row = conn.execute("SELECT id FROM students WHERE nickname = ?", (nickname,)).fetchone()
    return int(row["id"])


def student(conn: sqlite3.Connection, student_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM students WHERE id = ?", (student_id,)).fetchone()
    return row


def set_current(conn: sqlite3.Connection, student_id: int, item: str | None, insights: dict[str, Any] | None) -> None:
    conn.execute(
        "UPDATE students SET current_item = ?, insights = ? WHERE id = ?",
        (item, json.dumps(insights) if insights is not None else None, student_id),
    )


def record_answer(
    conn: sqlite3.Connection, student_id: int, question: dict[str, Any], correct: bool, given: str
) -> int:
    """Store one graded answer; returns its id. Committed when this returns.

    Timestamps have one-second resolution, and (user, item, Timestamp) identifies an answer downstream
    (the export dedupes on it, the service rejects a history that repeats it). So a student's answers
    get strictly increasing timestamps: an answer in the same second as the previous one is stamped one
    second later. BEGIN IMMEDIATE makes read-last-then-insert atomic across gunicorn workers.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = conn.execute(
            "SELECT Timestamp FROM interactions WHERE student_id = ? ORDER BY id DESC LIMIT 1", (student_id,)
        ).fetchone()
        stamp = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        if last is not None:
            stamp = max(stamp, datetime.fromisoformat(last[0]) + timedelta(seconds=1))
        cur = conn.execute(
            "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp,"
            " KnowledgeTag, given) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                student_id,
                user_id(student_id),
                question["assessmentItemID"],
                question["testId"],
                int(correct),
                stamp.strftime(TIMESTAMP_FORMAT),
                int(question["KnowledgeTag"]),
                given,
            ),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cur.lastrowid or 0)


def history(conn: sqlite3.Connection, student_id: int, limit: int = 1000) -> list[dict[str, Any]]:
    """The student's most recent answers, oldest first, in the canonical columns."""
    rows = conn.execute(
        "SELECT * FROM (SELECT id, userID, assessmentItemID, testId, answerCode, Timestamp, KnowledgeTag"
        " FROM interactions WHERE student_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
        (student_id, limit),
    ).fetchall()
    return [{c: r[c] for c in COLUMNS} for r in rows]


def answered_items(conn: sqlite3.Connection, student_id: int) -> set[str]:
    rows = conn.execute("SELECT DISTINCT assessmentItemID FROM interactions WHERE student_id = ?", (student_id,))
    return {r[0] for r in rows}


def counts(conn: sqlite3.Connection, student_id: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(answerCode), 0) AS c FROM interactions WHERE student_id = ?", (student_id,)
    ).fetchone()
    return int(row["n"]), int(row["c"])


def export_since(conn: sqlite3.Connection, since: int) -> tuple[pd.DataFrame, int]:
    """Every answer with id > ``since``, in id order, and the new watermark (the last id, or ``since``)."""
    rows = conn.execute(
        "SELECT id, userID, assessmentItemID, testId, answerCode, Timestamp, KnowledgeTag FROM interactions"
        " WHERE id > ? ORDER BY id",
        (since,),
    ).fetchall()
    df = pd.DataFrame([tuple(r) for r in rows], columns=["id", *COLUMNS])
    watermark = int(df["id"].iloc[-1]) if len(df) else since
    return df.loc[:, list(COLUMNS)], watermark
