"""The client's answer log: distinct timestamps at one-second resolution, shown/answered times, answers stored
once per one-time token under concurrent submits, numbered migrations, and start-up of many processes at once."""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

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
    assert db.schema_version(conn) == db.SCHEMA_VERSION
    assert db.applied_migrations(conn) == [n for n, _ in db.MIGRATIONS]
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


def test_concurrent_submits_of_one_token_store_exactly_one_row(tmp_path: Path) -> None:
    """Two tabs (two gunicorn workers, two connections) submit the same shown question at the same instant."""
    path = tmp_path / "c.db"
    setup = db.connect(path)
    db.init(setup)
    sid = db.get_or_create_student(setup, "two-tabs")
    tries, per_try = 10, 4
    outcomes: list[list[str]] = []
    for _ in range(tries):
        db.set_current(setup, sid, ITEM, None)
        token = db.student(setup, sid)["current_token"]
        barrier = threading.Barrier(per_try)
        got: list[str] = []

        def submit(token: str = token, barrier: threading.Barrier = barrier, got: list[str] = got) -> None:
            conn = db.connect(path)
            barrier.wait()
            try:
                db.record_answer(conn, sid, QUESTION, correct=True, given="1", token=token)
                got.append("stored")
            except db.AlreadyAnswered as e:
                got.append(f"already {e.interaction_id}")

        threads = [threading.Thread(target=submit) for _ in range(per_try)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcomes.append(sorted(got))
        stored = setup.execute("SELECT id FROM interactions WHERE answer_token = ?", (token,)).fetchall()
        assert len(stored) == 1
        assert sorted(got) == sorted(["stored"] + [f"already {stored[0]['id']}"] * (per_try - 1))
    assert db.counts(setup, sid) == (tries, tries)
    # The token is consumed: even a submit after everything settled stores nothing.
    with pytest.raises(db.AlreadyAnswered):
        db.record_answer(setup, sid, QUESTION, correct=False, given="2", token=token)
    # And the database itself refuses a second row with a token, whatever the code above it does.
    with pytest.raises(sqlite3.IntegrityError):
        setup.execute(
            "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp,"
            " KnowledgeTag, given, answer_token) VALUES (?, 'u', ?, 't', 1, '2030-01-01 00:00:00', 7, 'x', ?)",
            (sid, ITEM, token),
        )


def test_the_same_question_keeps_its_token_and_a_new_showing_gets_a_new_one(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    sid = db.get_or_create_student(conn, "ada")
    db.set_current(conn, sid, ITEM, None)
    first = db.student(conn, sid)["current_token"]
    db.set_current(conn, sid, ITEM, {"available": True})  # a refresh choosing the same question: tabs stay valid
    assert db.student(conn, sid)["current_token"] == first and len(first) == 32
    db.set_current(conn, sid, "A060001002", None)
    second = db.student(conn, sid)["current_token"]
    assert second not in (None, first)
    with pytest.raises(db.AlreadyAnswered) as stale:  # the replaced question's form: nothing to show, nothing stored
        db.record_answer(conn, sid, QUESTION, correct=True, given="1", token=first)
    assert stale.value.interaction_id is None and db.counts(conn, sid) == (0, 0)


def _start_worker(path: Path, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        conn = db.connect(path)
        db.init(conn)
        conn.close()
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as e:  # what a worker would die of at start-up
        results.put(f"{type(e).__name__}: {e}")  # type: ignore[attr-defined]


def test_many_processes_open_a_fresh_database_at_once(tmp_path: Path) -> None:
    """gunicorn -w N on a fresh database: every worker connects and migrates at once. Before the start-up
    lock, `PRAGMA journal_mode=WAL` failed with `database is locked` in 2 of 10 starts of 4 processes."""
    ctx = multiprocessing.get_context("fork")  # what gunicorn does; no re-import per process
    for attempt in range(10):
        path = tmp_path / f"fresh{attempt}" / "client.db"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_start_worker, args=(path, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4, f"start {attempt}"
        conn = db.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.applied_migrations(conn) == [n for n, _ in db.MIGRATIONS]


def _v3_database(path: Path) -> None:
    """A client.db exactly as the code before the migrations table left it: migrations 1-3 (the released
    functions) and PRAGMA user_version = 3, a student with a question on show, one answer."""
    conn = db.connect(path)
    for number, migrate in db.MIGRATIONS[:3]:
        migrate(conn)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO students (nickname, created_at, current_item) VALUES ('ada', '2024-01-01', ?)", (ITEM,))
    conn.execute(
        "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp, KnowledgeTag,"
        " given, shown_at, answered_at) VALUES (1, 'web-000001', 'A060001002', 'A060000001', 1,"
        " '2024-01-01 10:00:00', 7, '5', '2024-01-01 10:00:00', '2024-01-01 10:00:03')"
    )
    conn.close()


def test_a_database_at_the_last_user_version_is_adopted_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    _v3_database(path)
    conn = db.connect(path)
    assert "schema_migrations" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    db.init(conn)
    names = dict(conn.execute("SELECT number, name FROM schema_migrations").fetchall())
    assert names[1] == names[3] == "before the migrations table" and names[4] == "add_answer_tokens"
    assert db.schema_version(conn) == db.SCHEMA_VERSION
    assert db.history(conn, 1)[0]["assessmentItemID"] == "A060001002"  # the old answer is kept
    token = db.student(conn, 1)["current_token"]  # the question on show got a token: its open form works once
    assert token
    db.record_answer(conn, 1, QUESTION, correct=True, given="1", token=token)
    with pytest.raises(db.AlreadyAnswered):
        db.record_answer(conn, 1, QUESTION, correct=True, given="1", token=token)
    assert db.counts(conn, 1) == (2, 2)


def test_a_failing_migration_changes_nothing_and_the_next_start_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    nxt = db.SCHEMA_VERSION + 1

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (x INTEGER)")
        raise RuntimeError("killed mid-migration")

    def whole(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (x INTEGER)")

    def tables() -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    steps: list[Callable[[sqlite3.Connection], None]] = [half_done, whole]
    monkeypatch.setattr(db, "MIGRATIONS", (*db.MIGRATIONS, (nxt, steps[0])))
    with pytest.raises(RuntimeError, match="mid-migration"):
        db.init(conn)
    assert "extra" not in tables() and nxt not in db.applied_migrations(conn)  # rolled back with its number
    monkeypatch.setattr(db, "MIGRATIONS", (*db.MIGRATIONS[:-1], (nxt, steps[1])))
    db.init(conn)
    db.init(conn)  # once only
    assert "extra" in tables() and db.applied_migrations(conn)[-1] == nxt and db.schema_version(conn) == nxt


def test_migration_6_marks_the_logged_predictions_of_an_older_store_not_explored(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    conn = db.connect(path)
    for number, migrate in db.MIGRATIONS[:5]:
        migrate(conn)
        conn.execute(f"PRAGMA user_version = {number}")
    sid = db.get_or_create_student(conn, "ada")
    conn.execute(
        "INSERT INTO predictions (student_id, assessmentItemID, request_id, role, model_version, probability,"
        " predicted_at) VALUES (?, ?, 'r1', 'production', 'v1', 0.7, '2024-01-01 10:00:00')",
        (sid, ITEM),
    )
    conn.execute("UPDATE students SET current_request_id = 'r1', current_item = ? WHERE id = ?", (ITEM, sid))
    db.record_answer(conn, sid, QUESTION, correct=True, given="1")
    # A reader that does not migrate (dkt models quality opens the store read-only) sees no explored answer.
    assert db.scored_predictions(conn)["explored"].tolist() == [0]
    db.init(conn)
    assert 6 in db.applied_migrations(conn)
    assert [tuple(r) for r in conn.execute("SELECT request_id, explored FROM predictions")] == [("r1", 0)]
    db.set_current(conn, sid, ITEM, None, "r2", [{"model_version": "v1", "probability": 0.5, "explored": True}])
    db.record_answer(conn, sid, QUESTION, correct=False, given="2")
    assert db.scored_predictions(conn)["explored"].tolist() == [0, 1]
