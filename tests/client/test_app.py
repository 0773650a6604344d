"""The Flask app in-process (Flask test client, CSRF on), with the inference service down or recorded."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flask.testing import FlaskClient

from client.inference import BaseURL, InferenceClient, InferenceUnavailable
from client.practice import recommend
from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS
from dkt.itembank import SKILLS
from dkt.mastery import skill_levels
from tests.client.conftest import make_app, serving
from tests.serving.servers import PY, ROOT
from tests.support.students import sign_up_form


def token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def current_item(html: str) -> str:
    m = re.search(r'name="item" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def start(c: FlaskClient, nickname: str) -> str:
    """Register student ``nickname`` (tests/support/students.py's password) and return the practice page."""
    page = c.get("/").get_data(as_text=True)
    r = c.post("/register", data=sign_up_form(token(page), nickname), follow_redirects=True)
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    return r.get_data(as_text=True)


def answer(c: FlaskClient, page: str, text: str) -> str:
    r = c.post(
        "/answer", data={"item": current_item(page), "answer": text, "csrf_token": token(page)}, follow_redirects=True
    )
    assert r.status_code == 200
    return r.get_data(as_text=True)


def test_answers_are_saved_when_the_service_is_down(tmp_path: Path, sim_dir: Path, dead_url: str) -> None:
    app = make_app(tmp_path, sim_dir, dead_url)
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    c = app.test_client()
    page = start(c, "ada")
    assert "Predictions are unavailable right now" in page
    began = time.monotonic()
    item = current_item(page)
    page = answer(c, page, questions.loc[item, "answer"])
    assert time.monotonic() - began < 10  # timeouts and bounded retries: the page never hangs
    assert "Correct!" in page and "Predictions are unavailable right now" in page
    page = answer(c, page, "-12345")
    assert "Not quite" in page
    # A stale form (the same question again, e.g. a double submit) does not store a second answer.
    stale = c.post("/answer", data={"item": item, "answer": "1", "csrf_token": token(page)}, follow_redirects=True)
    assert "already answered" in stale.get_data(as_text=True)
    # Refresh shows the same question; nothing is stored twice.
    assert current_item(c.get("/practice").get_data(as_text=True)) == current_item(page)
    runner = app.test_cli_runner()
    out = tmp_path / "export.csv"
    res = runner.invoke(args=["export-interactions", "--since", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = read_csv(out)  # the export is a valid canonical table
    assert df["answerCode"].tolist() == [1, 0]
    assert df["userID"].nunique() == 1 and df["assessmentItemID"].iloc[0] == item


def test_bad_input_and_csrf(tmp_path: Path, sim_dir: Path, dead_url: str) -> None:
    app = make_app(tmp_path, sim_dir, dead_url)
    c = app.test_client()
    r = c.post("/register", data={"username": "ada", "password": "long enough"})
    assert r.status_code == 400 and "form expired" in r.get_data(as_text=True)  # no CSRF token
    page = c.get("/").get_data(as_text=True)
    for bad in ("", "x" * 33, "<script>alert(1)</script>"):
        r = c.post("/register", data=sign_up_form(token(page), bad))
        assert r.status_code == 400
        assert "<script>alert" not in r.get_data(as_text=True)
    page = start(c, "bob")
    r = c.post(
        "/answer",
        data={"item": current_item(page), "answer": "9" * 40, "csrf_token": token(page)},
        follow_redirects=True,
    )
    assert "Type an answer of 1 to 32" in r.get_data(as_text=True)
    page = answer(c, r.get_data(as_text=True), "<b>hi</b>")
    assert "&lt;b&gt;hi&lt;/b&gt;" in page and "<b>hi</b>" not in page  # echoed, escaped
    assert "is not a number" in page and "0/0 correct" in page  # refused: nothing recorded
    r = c.post("/answer", data={"answer": "x" * 20000, "csrf_token": token(page)})
    assert r.status_code == 413
    assert c.post("/answer", data={"item": current_item(page), "answer": "1"}).status_code == 400


@pytest.mark.slow  # four `flask` CLI runs
def test_export_watermark_is_exact_and_repeatable(tmp_path: Path, sim_dir: Path, dead_url: str) -> None:
    app = make_app(tmp_path, sim_dir, dead_url)
    clients = [app.test_client() for _ in range(3)]
    pages = [start(c, f"s{i}") for i, c in enumerate(clients)]
    for i, c in enumerate(clients):
        pages[i] = answer(c, pages[i], "1")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DKT_CLIENT_DB": str(tmp_path / "client.db"),
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "DKT_SECRET_KEY": "x",
    }

    def export(since: int, out: Path) -> int:
        cmd = [PY, "-m", "flask", "--app", "client", "export-interactions", "--since", str(since), "--out", str(out)]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return int(res.stdout.strip().splitlines()[-1].split(": ")[1])

    w1 = export(0, tmp_path / "a.csv")
    assert w1 == 3 and len(pd.read_csv(tmp_path / "a.csv")) == 3
    assert export(0, tmp_path / "a2.csv") == w1
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "a2.csv").read_text()  # repeatable
    for i, c in enumerate(clients[:2]):
        pages[i] = answer(c, pages[i], "2")
    w2 = export(w1, tmp_path / "b.csv")
    b = pd.read_csv(tmp_path / "b.csv")
    assert w2 == 5 and len(b) == 2  # exactly the new ones
    assert export(w2, tmp_path / "c.csv") == w2 and len(pd.read_csv(tmp_path / "c.csv")) == 0
    both = pd.concat([pd.read_csv(tmp_path / "a.csv"), b])
    assert not both.duplicated().any() and len(both) == 5


def test_url_file_overrides_and_is_reread(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    base = BaseURL("http://default:1", str(url_file))
    assert base.get() == "http://default:1"  # no file yet
    url_file.write_text("http://first:2/\n")
    assert base.get() == "http://first:2"
    tmp = tmp_path / "url.tmp"
    tmp.write_text("http://second:3")
    os.utime(tmp, (time.time() + 5, time.time() + 5))  # a distinct mtime even on coarse clocks
    tmp.replace(url_file)  # written atomically, as the pipeline does
    assert base.get() == "http://second:3"


def test_client_retries_then_gives_up_quickly(dead_url: str) -> None:
    client = InferenceClient(BaseURL(dead_url), timeout_s=0.5, retries=3, backoff_s=0.05)
    began = time.monotonic()
    with pytest.raises(InferenceUnavailable, match="ConnectionError"):
        client.post("/predict", {})
    assert time.monotonic() - began < 5


class Recorder(ThreadingHTTPServer):
    """A real HTTP server speaking the inference API's response shapes; keeps every request body.

    The client's side of the time contract is what is under test here: what it sends, and when.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.short_by = 0  # /predict answers this many predictions fewer than the candidates it was sent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def reply_json(handler: BaseHTTPRequestHandler, out: dict[str, Any]) -> None:
    data = json.dumps(out).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _RecorderHandler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.path == "/predict":
            # Distinct probabilities so one candidate is chosen deterministically.
            preds = [
                {**c, "probability": 0.3 + 0.4 * i / len(body["candidates"])} for i, c in enumerate(body["candidates"])
            ]
            out: dict[str, Any] = {
                "model_version": "recorder",
                "predictions": preds[: len(preds) - self.server.short_by],
            }
        elif self.path == "/knowledge_state":
            out = {"skills": [{"KnowledgeTag": 1, "mastery": 0.5}]}
        else:
            out = {"expected_score": 50.0}
        reply_json(self, out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with serving(Recorder()) as server:
        yield server


def test_question_is_stamped_when_first_shown_and_scored_at_that_time(
    tmp_path: Path, sim_dir: Path, recorder: Recorder
) -> None:
    app = make_app(tmp_path, sim_dir, recorder.url)
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    c = app.test_client()
    page = start(c, "ada")
    assert "Predictions are unavailable" not in page

    def current_shown_at() -> str:
        with sqlite3.connect(tmp_path / "client.db") as conn:
            return str(conn.execute("SELECT current_shown_at FROM students").fetchone()[0])

    first_shown = current_shown_at()
    time.sleep(0.05)
    assert current_item(c.get("/practice").get_data(as_text=True)) == current_item(page)
    assert current_shown_at() == first_shown  # a reload of the same question is not a new showing
    time.sleep(1.2)  # answering takes time: the answer must not be stamped with it
    page = answer(c, page, questions.loc[current_item(page), "answer"])
    second_shown = current_shown_at()
    predicts = [body for path, body in recorder.requests if path == "/predict"]
    assert len(predicts) == 2 and all("at" in b for b in predicts)
    page = answer(c, page, "-1")

    with sqlite3.connect(tmp_path / "client.db") as conn:
        rows = conn.execute("SELECT Timestamp, shown_at, answered_at FROM interactions ORDER BY id").fetchall()
    (ts1, shown1, answered1), (ts2, shown2, _) = rows
    assert (shown1, shown2) == (first_shown, second_shown)
    assert ts1 == first_shown[:19] and ts2 == second_shown[:19]  # Timestamp = shown at, whole seconds
    assert (datetime.fromisoformat(answered1) - datetime.fromisoformat(shown1)).total_seconds() >= 1.2
    # The service was asked to score the second question at the time it was then shown (the render follows
    # the choice within the same request cycle: at most the second boundary in between).
    at = datetime.fromisoformat(predicts[1]["at"])
    assert timedelta(0) <= datetime.fromisoformat(ts2) - at <= timedelta(seconds=1)
    assert datetime.fromisoformat(predicts[1]["at"]) > datetime.fromisoformat(ts1)
    runner = app.test_cli_runner()
    out = tmp_path / "export.csv"
    assert runner.invoke(args=["export-interactions", "--out", str(out)]).exit_code == 0
    exported = pd.read_csv(out)
    assert list(exported.columns) == [*COLUMNS, "ResponseTime"]
    assert exported["ResponseTime"].iloc[0] >= 1.2
    assert exported["Timestamp"].tolist() == [ts1, ts2]


class Tutoring(ThreadingHTTPServer):
    """A stand-in service with the real response shapes: P(correct) per item from a hash of its id, mastery per
    skill growing with right answers in it, levels from dkt.mastery (the service's own rules)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TutoringHandler)
        self.predicted: list[dict[str, float]] = []  # item id -> probability, per /predict

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def fake_probability(item_id: str) -> float:
    return 0.05 + 0.9 * (zlib.crc32(item_id.encode()) % 1000) / 1000


class _TutoringHandler(BaseHTTPRequestHandler):
    server: Tutoring

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out: dict[str, Any] = {"model_name": "fake", "model_version": "fake-1"}
        if self.path == "/predict":
            probs = {c["assessmentItemID"]: fake_probability(c["assessmentItemID"]) for c in body["candidates"]}
            self.server.predicted.append(probs)
            out["predictions"] = [{**c, "probability": probs[c["assessmentItemID"]]} for c in body["candidates"]]
        elif self.path == "/knowledge_state":
            right: dict[int, int] = {}
            for h in body["history"]:
                right[int(h["KnowledgeTag"])] = right.get(int(h["KnowledgeTag"]), 0) + int(h["answerCode"])
            mastery = {s.tag: min(0.95, 0.3 + 0.1 * right.get(s.tag, 0)) for s in SKILLS}
            out["skills"] = skill_levels(mastery, body["history"])
        else:
            out["expected_score"] = 50.0
        reply_json(self, out)

    def log_message(self, *args: object) -> None:
        pass


def test_diagnostic_then_one_skill_session_with_refusal_summary_and_progress(tmp_path: Path, sim_dir: Path) -> None:
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    with serving(Tutoring()) as fake:
        app = make_app(tmp_path, sim_dir, fake.url, DKT_DIAGNOSTIC_ITEMS=5, DKT_SESSION_LENGTH=4, DKT_EXPLORE_RATE=0.0)
        c = app.test_client()
        page = start(c, "ada")
        assert "Getting to know you" in page and "Question 1 of 5" in page
        tags = []
        for i in range(5):  # the diagnostic: distinct skills, each the candidate closest to P = 0.5
            item = current_item(page)
            probs = fake.predicted[-1]
            assert abs(probs[item] - 0.5) == min(abs(p - 0.5) for p in probs.values())
            tags.append(questions.loc[item, "KnowledgeTag"])
            page = answer(c, page, questions.loc[item, "answer"] if i % 2 == 0 else "-1")
        assert len(set(tags)) == 5
        assert "Diagnostic done" in page and "Next: practise" in page  # the summary card above the next question
        assert "Practising" in page and "Why this skill: weakest" in page
        # A non-numeric answer is refused and not recorded; the question stays.
        item = current_item(page)
        refused = answer(c, page, "abc")
        assert "is not a number" in refused and current_item(refused) == item
        assert "5/5" not in refused and "/5 correct" in refused
        with sqlite3.connect(tmp_path / "client.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0] == 5
            skill = conn.execute("SELECT skill FROM practice_sessions WHERE kind = 'practice'").fetchone()[0]
        # Practice: every question of the session is of its skill, the one closest to the target 0.7.
        for _ in range(4):
            item = current_item(page)
            assert int(questions.loc[item, "KnowledgeTag"]) == skill
            probs = fake.predicted[-1]
            assert {int(questions.loc[i, "KnowledgeTag"]) for i in probs} == {skill}
            assert abs(probs[item] - 0.7) == min(abs(p - 0.7) for p in probs.values())
            page = answer(c, page, questions.loc[item, "answer"])
            assert "→" in page  # how the skill's mastery moved
        # After DKT_SESSION_LENGTH answers: the summary, with the skill up and the predicted test scores.
        assert "Session summary" in page and "Went up" in page and "Predicted test scores" in page
        assert not re.search(r"A\d{9}", page.replace(f'value="{current_item(page)}"', ""))  # no item or test ids shown
        progress = c.get("/progress").get_data(as_text=True)
        assert progress.count("<polyline") == 5  # the five skills practised (the practice skill was one of them)
        # The End session button: its summary page.
        r = c.post("/session/end", data={"csrf_token": token(page)})
        assert r.status_code == 302 and "/summary/" in r.headers["Location"]
        assert "you ended it" in c.get(r.headers["Location"]).get_data(as_text=True)


def test_recommendation_rules() -> None:
    now = datetime(2026, 11, 26, 12)
    add1, add2, sub1 = 1101, 1102, 2201
    tags = [add1, sub1, add2]
    fresh = (now - timedelta(hours=1)).isoformat(sep=" ")
    old = (now - timedelta(days=9)).isoformat(sep=" ")
    mastered = {"mastery": 0.9, "level": "mastered", "evidence": 8}
    weak = {"mastery": 0.4, "level": "practising", "evidence": 2}
    assert recommend({add1: mastered}, {add1: (old, 0)}, tags, now, 10, 7.0)[1].startswith("due for review: last")
    assert recommend({add1: mastered, sub1: weak}, {add1: (fresh, 1), sub1: (fresh, 1)}, tags, now, 10, 7.0) == (
        sub1,
        "weakest: your lowest mastery among the skills you have started (40%)",
    )
    tag, why = recommend({add1: mastered}, {add1: (fresh, 3)}, tags, now, 10, 7.0)
    assert (tag, why) == (sub1, "ready to learn: a first-level skill: nothing to know before it")
    tag, why = recommend({add1: mastered, sub1: mastered}, {add1: (fresh, 3), sub1: (fresh, 3)}, tags, now, 10, 7.0)
    assert (tag, why) == (add2, "ready to learn: you have mastered Addition, level 1")
    # The daily cap: a capped skill is not recommended; all capped: the least practised today.
    assert recommend({sub1: weak}, {sub1: (fresh, 10)}, tags, now, 10, 7.0)[0] != sub1
    assert recommend({}, {t: (fresh, 10) for t in tags}, tags, now, 10, 7.0)[1].startswith("extra practice")
