"""The client's answer log: distinct timestamps at one-second resolution, shown/answered times, schema migration."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from client import db
from dkt.data.schema import COLUMNS
from pipeline.dataset import read_new_interactions

ITEM = "A060001001"
QUESTION = {"assessmentItemID": ITEM, "testId": "A060000001", "KnowledgeTag": 7}


def test_rapid_answers_to_one_item_get_strictly_increasing_timestamps(tmp_path: Path) -> None:
    # A student who answers the same question twice within a second used to log two rows with the same
    # (item, Timestamp): the export then dropped one as a duplicate and the service refused the history.
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    sid = db.get_or_create_student(conn, "fast")
    for i in range(20):
        db.record_answer(conn, sid, QUESTION, correct=i % 2 == 0, given=str(i))
    stamps = [datetime.fromisoformat(r["Timestamp"]) for r in db.history(conn, sid)]
    assert len(stamps) == 20
    assert all(b > a for a, b in itertools.pairwise(stamps))
    df, _ = db.export_since(conn, 0)
    assert not df.duplicated(["userID", "assessmentItemID", "Timestamp"]).any()


def test_concurrent_writers_for_one_student_never_share_a_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    setup = db.connect(path)
    db.init(setup)
    sid = db.get_or_create_student(setup, "double-submit")

    def answer_many() -> None:
        conn = db.connect(path)  # one connection per gunicorn worker
        for _ in range(15):
            db.record_answer(conn, sid, QUESTION, correct=True, given="1")

    threads = [threading.Thread(target=answer_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [r["Timestamp"] for r in db.history(setup, sid)]
    assert len(stamps) == 60 and len(set(stamps)) == 60
    assert stamps == sorted(stamps)  # id order and time order agree


# The schema as first shipped (user_version 0): a client.db from before shown_at / answered_at.
SCHEMA_V1 = """
CREATE TABLE students (
    id INTEGER PRIMARY KEY AUTOINCREMENT, nickname TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
    current_item TEXT, insights TEXT
);
CREATE TABLE interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, student_id INTEGER NOT NULL REFERENCES students(id),
    userID TEXT NOT NULL, assessmentItemID TEXT NOT NULL, testId TEXT NOT NULL,
    answerCode INTEGER NOT NULL CHECK (answerCode IN (0, 1)), Timestamp TEXT NOT NULL,
    KnowledgeTag INTEGER NOT NULL, given TEXT NOT NULL
);
CREATE INDEX interactions_student ON interactions(student_id, id);
"""


def test_old_database_is_migrated_once_and_keeps_its_answers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA_V1)
        old.execute(
            "INSERT INTO students (nickname, created_at, current_item) VALUES ('ada', '2024-01-01', ?)", (ITEM,)
        )
        old.executemany(
            "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp,"
            " KnowledgeTag, given) VALUES (1, 'web-000001', ?, 'A060000001', ?, ?, 7, 'x')",
            [("A060001001", 1, "2024-01-01 10:00:00"), ("A060001002", 0, "2099-01-01 10:00:30")],
        )
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 0
    conn = db.connect(path)
    db.init(conn)
    db.init(conn)  # idempotent: a second worker starting, or a restart
    assert db.schema_version(conn) == db.SCHEMA_VERSION == 3
    rows = conn.execute("SELECT Timestamp, shown_at, answered_at FROM interactions ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [
        ("2024-01-01 10:00:00", "2024-01-01 10:00:00", None),
        ("2099-01-01 10:00:30", "2099-01-01 10:00:30", None),
    ]
    # New answers after the migration: shown/answered recorded, and still strictly after the old Timestamps.
    db.mark_shown(conn, 1, ITEM)
    db.record_answer(conn, 1, QUESTION, correct=True, given="1")
    df, watermark = db.export_since(conn, 0)
    assert watermark == 3 and list(df.columns) == [*COLUMNS, "ResponseTime"]
    assert df["ResponseTime"].iloc[:2].isna().all()  # unknown for old rows, not a made-up 0
    assert df["ResponseTime"].iloc[2] >= 0
    assert df["Timestamp"].iloc[2] == "2099-01-01 10:00:31"
    # The export is what the pipeline reads: the extra column is accepted and the rows validate.
    out = tmp_path / "export.csv"
    df.to_csv(out, index=False)
    assert len(read_new_interactions(out)) == 3


def test_shown_at_is_the_first_render_and_timestamp_is_shown_at(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    sid = db.get_or_create_student(conn, "ada")
    db.set_current(conn, sid, ITEM, None)
    shown = datetime(2030, 5, 1, 12, 0, 0, 250_000)
    assert db.mark_shown(conn, sid, ITEM, at=shown) == shown
    assert db.mark_shown(conn, sid, ITEM, at=shown + timedelta(minutes=5)) == shown  # a reload keeps it
    db.set_current(conn, sid, ITEM, {"available": True})  # the same question chosen again keeps it too
    assert db.mark_shown(conn, sid, ITEM) == shown
    assert db.mark_shown(conn, sid, "A999999999") is None  # not the current question: nothing stamped
    db.record_answer(conn, sid, QUESTION, correct=False, given="3")
    row = conn.execute("SELECT Timestamp, shown_at, answered_at FROM interactions").fetchone()
    assert row["Timestamp"] == "2030-05-01 12:00:00"  # shown at, whole seconds
    assert datetime.fromisoformat(row["shown_at"]) == shown
    assert datetime.fromisoformat(row["answered_at"]) <= datetime.now(UTC).replace(tzinfo=None)
    # The stamp is consumed by the answer, and a different next question starts unstamped.
    assert db.student(conn, sid)["current_shown_at"] is None
    db.mark_shown(conn, sid, ITEM, at=shown)
    db.set_current(conn, sid, "A060001002", None)
    assert db.student(conn, sid)["current_shown_at"] is None
    # Answered (now) minus shown (in 2030) is negative here: a clock stepped back never exports < 0.
    df, _ = db.export_since(conn, 0)
    assert df["ResponseTime"].tolist() == [0.0]


def test_response_time_is_answered_minus_shown(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    sid = db.get_or_create_student(conn, "bob")
    db.set_current(conn, sid, ITEM, None)
    shown = db.utc_now() - timedelta(seconds=42.5)
    db.mark_shown(conn, sid, ITEM, at=shown)
    # The Timestamp the service is told for the next question is the one the answer gets.
    expected = db.next_timestamp(conn, sid, shown)
    db.record_answer(conn, sid, QUESTION, correct=True, given="1")
    df, _ = db.export_since(conn, 0)
    assert df["Timestamp"].iloc[0] == expected == shown.strftime(db.TIMESTAMP_FORMAT)
    assert 42.5 <= df["ResponseTime"].iloc[0] < 52.5  # however slow this machine is
