"""The teacher pages in-process (Flask test client, CSRF on): who may see what, and the numbers of each view.

Answers are real rows of the client database; mastery comes from a stand-in for the service's /knowledge_state
over HTTP whose levels are dkt/mastery.py's own (the live service is in test_teacher_live.py)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from client import accounts, db
from dkt import mastery
from dkt.itembank import skill_name
from tests.client.conftest import make_app, serving
from tests.client.test_accounts import login

PASSWORD = "teacher-password-1"
NOW = datetime(2026, 11, 26, 12, 0, 0)


class StandIn(BaseHTTPRequestHandler):
    """/knowledge_state: every skill starts at 0.6; each right answer in it adds 0.05, each wrong one takes 0.05.
    The level and evidence come from dkt.mastery.skill_levels, as the service adds them."""

    tags: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        history = body["history"]
        values = {t: 0.6 for t in self.tags}
        for h in history:
            values[h["KnowledgeTag"]] += 0.05 if h["answerCode"] else -0.05
        out = json.dumps({"skills": mastery.skill_levels(values, history)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accounts with the smallest argon2id parameters: password storage is test_accounts.py's subject, and eight
    hashes and sign-ins at the real cost would be most of this module's time."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def stand_in(sim_dir: Path) -> Iterator[str]:
    StandIn.tags = sorted(int(t) for t in pd.read_csv(sim_dir / "questions.csv")["KnowledgeTag"].unique())
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), StandIn)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def teacher_with_class(app: Flask, name: str, class_name: str) -> tuple[FlaskClient, int]:
    """A teacher account (as `dkt client create-user --role teacher` makes it), signed in, owning one class."""
    with db.connect(app.config["DKT_CLIENT_DB"]) as conn:
        teacher = accounts.create_account(conn, name, PASSWORD, "teacher")
        accounts.create_class(conn, teacher, class_name)
        class_id = int(conn.execute("SELECT MAX(id) FROM classes").fetchone()[0])
    c = app.test_client()
    assert login(c, name, PASSWORD)[0] == 200
    return c, class_id


def student_in(app: Flask, name: str, class_id: int) -> int:
    with db.connect(app.config["DKT_CLIENT_DB"]) as conn:
        sid = accounts.create_account(conn, name, PASSWORD, "student").student_id
        assert sid is not None
        code = conn.execute("SELECT code FROM classes WHERE id = ?", (class_id,)).fetchone()[0]
        accounts.join_class(conn, sid, code)
    return sid


def answer(
    conn: sqlite3.Connection,
    sid: int,
    item: dict[str, Any],
    correct: bool,
    given: str,
    shown: datetime,
    seconds: float,
    probability: float | None = None,
) -> None:
    """One answer as record_answer stores it (the columns the views read), with its logged prediction."""
    cur = conn.execute(
        "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp, KnowledgeTag,"
        " given, shown_at, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sid, db.user_id(sid), item["assessmentItemID"], item["testId"], int(correct), f"{shown:%Y-%m-%d %H:%M:%S}",
         int(item["KnowledgeTag"]), given, shown.isoformat(sep=" "),
         (shown + timedelta(seconds=seconds)).isoformat(sep=" ")),
    )  # fmt: skip
    if probability is not None:
        conn.execute(
            "INSERT INTO predictions (student_id, assessmentItemID, request_id, role, model_version, probability,"
            " predicted_at, interaction_id, answerCode) VALUES (?, ?, ?, 'production', 'v1', ?, ?, ?, ?)",
            (sid, item["assessmentItemID"], f"r{cur.lastrowid}", probability, shown.isoformat(sep=" "),
             cur.lastrowid, int(correct)),
        )  # fmt: skip


def rows_of(c: FlaskClient, url: str) -> list[dict[str, str]]:
    r = c.get(url)
    assert r.status_code == 200 and r.mimetype == "text/csv", (r.status_code, r.get_data(as_text=True)[:300])
    assert "attachment" in r.headers["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))


VIEWS = ("", "/at-risk", "/items", "/time")


def test_only_the_owning_teacher_sees_a_class_and_a_stopped_service_is_said(
    tmp_path: Path, sim_dir: Path, dead_url: str
) -> None:
    app = make_app(tmp_path, sim_dir, dead_url, DKT_INFERENCE_RETRIES=1)
    noether, mine = teacher_with_class(app, "ms noether", "5B maths")
    hopper, theirs = teacher_with_class(app, "mr hopper", "6A maths")
    ada = student_in(app, "ada", mine)
    grace = student_in(app, "grace", theirs)
    home = noether.get("/teach").get_data(as_text=True)
    assert "5B maths" in home and "6A maths" not in home
    assert f'href="/teach/class/{mine}"' in home  # the class's page, not its CSV
    for view in VIEWS:
        for suffix in ("", ".csv"):
            url = f"/teach/class/{mine}{view}{suffix}" if view else f"/teach/class/{mine}{suffix}"
            assert noether.get(url).status_code == 200, url
            assert hopper.get(url).status_code == 404, url  # another teacher's class: as if it did not exist
            assert app.test_client().get(url).status_code == 302, url  # signed out: to the sign-in page
    assert noether.get(f"/teach/class/{mine}/student/{ada}").status_code == 200
    assert noether.get(f"/teach/class/{mine}/student/{grace}").status_code == 404  # not in this class
    assert hopper.get(f"/teach/class/{mine}/student/{ada}").status_code == 404
    assert noether.get("/teach/class/999").status_code == 404
    student = app.test_client()
    assert login(student, "ada", PASSWORD)[0] == 200
    assert student.get("/teach").status_code == 403
    assert student.get(f"/teach/class/{mine}").status_code == 403

    # The service is down (dead_url): each view says so and shows what the answers alone support.
    item = app.extensions["dkt"]["bank"].first_question()
    with db.connect(app.config["DKT_CLIENT_DB"]) as conn:
        answer(conn, ada, item, True, str(item["answer"]), db.utc_now(), 8)
    student_in(app, "bob", mine)
    grid = noether.get(f"/teach/class/{mine}").get_data(as_text=True)
    assert 'id="service-down"' in grid
    levels = {(r["student"], r["skill"]): r["level"] for r in rows_of(noether, f"/teach/class/{mine}.csv")}
    assert levels[("ada", skill_name(int(item["KnowledgeTag"])))] == "practising"  # evidence alone: no higher
    assert set(levels.values()) == {"practising", "not started"}
    reasons = rows_of(noether, f"/teach/class/{mine}/at-risk.csv")
    assert reasons == [{"student": "bob", "reason": "has not answered any question yet"}]
    drill = noether.get(f"/teach/class/{mine}/student/{ada}").get_data(as_text=True)
    assert 'id="service-down"' in drill and "<svg" not in drill


def test_views_from_answers_and_the_model(
    tmp_path: Path, sim_dir: Path, stand_in: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path, sim_dir, stand_in, DKT_AT_RISK_ATTEMPTS=6, DKT_AT_RISK_WINDOW=4, DKT_AT_RISK_SCORE_DROP=1)
    c, class_id = teacher_with_class(app, "ms noether", "5B maths")
    ada, bob, cy = (student_in(app, n, class_id) for n in ("ada", "bob", "cy"))
    bank = app.extensions["dkt"]["bank"]
    items = bank.df.sort_values("assessmentItemID").to_dict("records")
    first_tag = int(items[0]["KnowledgeTag"])
    same_skill = [i for i in items if int(i["KnowledgeTag"]) == first_tag]
    q0 = same_skill[0]
    monkeypatch.setattr(db, "utc_now", lambda: NOW)  # the views' "now": inactive days count from it
    with db.connect(app.config["DKT_CLIENT_DB"]) as conn:
        t = NOW - timedelta(hours=2)
        # ada: 6 right answers in one skill (mastered), a minute each; q0 first right, logged at 0.7.
        for k, item in enumerate(same_skill[:6]):
            answer(conn, ada, item, True, str(item["answer"]), t + timedelta(minutes=k), 60, 0.7 if k == 0 else None)
        # bob: q0 wrong twice ("7" both times), then right, then 5 more wrong: many attempts, falling score.
        for k, (item, ok, given) in enumerate(
            [(q0, False, "7"), (q0, False, "7"), (q0, True, str(q0["answer"]))]
            + [(i, False, "-1") for i in same_skill[1:6]]
        ):
            answer(conn, bob, item, ok, given, t + timedelta(minutes=k), 3600 if k == 0 else 10, 0.4 if k < 2 else None)
        # cy: one answer, 10 days ago.
        answer(conn, cy, items[-1], True, str(items[-1]["answer"]), NOW - timedelta(days=10), 5)

    grid = c.get(f"/teach/class/{class_id}").get_data(as_text=True)
    assert 'id="service-down"' not in grid and skill_name(first_tag) in grid
    assert "ms noether" in grid and "web-0" not in grid and str(q0["assessmentItemID"]) not in grid  # no internal ids
    cells = {r["student"]: r for r in rows_of(c, f"/teach/class/{class_id}.csv") if r["skill"] == skill_name(first_tag)}
    assert cells["ada"]["level"] == "mastered" and cells["ada"]["answers_in_skill"] == "6"
    assert float(cells["ada"]["mastery_pct"]) == pytest.approx(90.0)  # 0.6 + 6 x 0.05, as the model said
    assert cells["bob"]["level"] == "practising" and cells["bob"]["answers_in_skill"] == "8"
    assert cells["cy"]["level"] == "not started" and cells["cy"]["mastery_pct"] != ""  # the model's, but no evidence

    # Sorting by that skill's level: mastered first when descending, the order reversed ascending.
    def order(query: str) -> list[str]:
        page = c.get(f"/teach/class/{class_id}?{query}").get_data(as_text=True)
        return [n for _, n in sorted((page.index(f'data-student="{n}"'), n) for n in ("ada", "bob", "cy"))]

    assert order(f"sort={first_tag}&order=desc") == ["ada", "bob", "cy"]
    assert order(f"sort={first_tag}&order=asc") == ["cy", "bob", "ada"]
    assert order("sort=answers&order=desc") == ["bob", "ada", "cy"]
    assert order("sort=name&order=desc") == ["cy", "bob", "ada"]

    reasons = rows_of(c, f"/teach/class/{class_id}/at-risk.csv")
    assert any(r["student"] == "bob" and r["reason"].startswith("8 answers in") for r in reasons), reasons
    # The last 4 answers wrong: 4 x 5 points in one skill of 16, a drop of 1.25 points of predicted score.
    assert any(r["student"] == "bob" and "predicted score fell from" in r["reason"] for r in reasons), reasons
    assert any(r["student"] == "cy" and r["reason"].startswith("inactive for 9 days") for r in reasons), reasons
    assert not any(r["student"] == "ada" for r in reasons), reasons
    assert "predicted score fell" in c.get(f"/teach/class/{class_id}/at-risk").get_data(as_text=True)

    report = {r["question"]: r for r in rows_of(c, f"/teach/class/{class_id}/items.csv")}
    q0_row = report[str(q0["question"])]
    # ada right at her first try, bob wrong at his: 50%; of 4 answers 2 right; predictions logged for 3 of them.
    assert q0_row["first_try_correct_pct"] == "50.0" and q0_row["answers"] == "4" and q0_row["students"] == "2"
    assert q0_row["observed_correct_pct"] == "50.0"
    assert float(q0_row["predicted_correct_pct"]) == pytest.approx(100 * (0.7 + 0.4 + 0.4) / 3, abs=0.05)
    assert float(q0_row["observed_correct_pct_of_predicted"]) == pytest.approx(100 / 3, abs=0.05)
    assert q0_row["common_wrong_answers"] == "7 (2)" and q0_row["skill"] == skill_name(first_tag)
    assert next(iter(report)) != str(q0["question"])  # hardest (0% at first try) first
    # A cell a spreadsheet would read as a formula ("-1 (1)") is quoted; a number alone would not be.
    assert "'-1 (1)" in {r["common_wrong_answers"] for r in report.values()}

    time_rows = {r["student"]: r for r in rows_of(c, f"/teach/class/{class_id}/time.csv")}
    assert time_rows["ada"]["minutes_on_task"] == "6.0" and time_rows["ada"]["median_seconds_per_answer"] == "60.0"
    assert time_rows["bob"]["minutes_on_task"] == str(round((600 + 7 * 10) / 60, 1))  # the hour counts as 10 min
    assert time_rows["cy"]["days_active"] == "1" and time_rows["cy"]["last_answer"].startswith("2026-11-16")

    drill = c.get(f"/teach/class/{class_id}/student/{bob}").get_data(as_text=True)
    assert 'data-plot="mastery-over-time"' in drill and drill.count('class="series"') == 1  # one practised skill
    over_time = rows_of(c, f"/teach/class/{class_id}/student/{bob}.csv")
    points = [float(r["mastery_pct"]) for r in over_time]
    assert [int(r["answers_so_far"]) for r in over_time] == list(range(9))  # 8 answers: every prefix
    assert points[0] == pytest.approx(60.0) and points[-1] == pytest.approx(60.0 - 7 * 5 + 5)  # 7 wrong, 1 right
