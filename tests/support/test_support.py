"""The helpers tests and benchmarks share (tests/support): a free port, simulated students on the real client."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.students import answer_key, answering, client_server, run_students


def test_free_port_can_be_listened_on_at_once() -> None:
    ports = [free_port() for _ in range(5)]
    for port in ports:
        assert 1024 <= port <= 65535
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()


@pytest.mark.slow
def test_students_answer_through_the_real_client(tmp_path: Path, sim_dir: Path) -> None:
    """Sessions, questions and answers over HTTP land in the client's database, graded as the students meant."""
    db, questions = tmp_path / "client.db", sim_dir / "questions.csv"
    env = {
        **os.environ,
        "DKT_CLIENT_DB": str(db),
        "DKT_QUESTIONS": str(questions),
        # No inference service: every answer is still stored, and the page says predictions are unavailable.
        "DKT_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
        "DKT_INFERENCE_URL_FILE": "",
        "DKT_INFERENCE_RETRIES": "1",
        "DKT_SECRET_KEY": "support-test",
    }
    with client_server(env, free_port(), tmp_path / "gunicorn.log") as base:
        tally = run_students(base, questions, 2, 3, seed=5, prefix="support")
        with answering(base, questions, seed=50, prefix="during") as during:
            deadline = time.monotonic() + 60
            while during.answers < 5 and time.monotonic() < deadline:
                time.sleep(0.2)
    assert tally.answers == 6
    assert tally.failed == 6 and set(tally.errors) == {"POST /answer -> page says predictions are unavailable"}
    assert during.answers >= 5
    key = answer_key(questions)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.nickname, i.assessmentItemID, i.given, i.answerCode FROM interactions i"
            " JOIN students s ON s.id = i.student_id"
        ).fetchall()
    mine = [r for r in rows if r[0].startswith("support-5-")]
    assert len(mine) == 6 and {r[0] for r in mine} == {"support-5-0", "support-5-1"}
    assert len(rows) - len(mine) >= 5  # the background students' answers too
    for _, item, given, code in rows:  # a given answer is right exactly when it is the key's answer
        assert code == int(given == key[item]), (item, given, key[item])
