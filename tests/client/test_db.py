"""The client's answer log: answers given faster than the timestamp's one-second resolution stay distinct."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime
from pathlib import Path

from client import db

QUESTION = {"assessmentItemID": "A060001001", "testId": "A060000001", "KnowledgeTag": 7}


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
