"""The prediction log: what the page was told about each question it showed, joined with the answer that followed.

The Flask app runs in-process with a real InferenceClient talking HTTP to a small real server that answers in the
service's response shapes (model name and version, an echoed X-Request-ID, /metadata with a test AUC) and can be
switched off. The same flow against the real `bentoml serve` is the slow test at the end.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import roc_auc_score

from client import db
from client.tutor import choose, logged_predictions
from tests.client.conftest import make_app, serving
from tests.client.test_app import answer, current_item, start
from tests.serving.servers import Server


class FakeService(ThreadingHTTPServer):
    """The inference API's shapes over real HTTP; ``down`` makes every call a 503, ``version`` is what serves."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.version = "v-a"
        self.down = False
        self.request_ids: list[tuple[str, str | None]] = []  # (path, X-Request-ID) of every call
        self.metadata_calls = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeService

    def _reply(self, status: int, out: dict[str, Any]) -> None:
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.headers.get("X-Request-ID"):
            self.send_header("X-Request-ID", self.headers["X-Request-ID"])
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.metadata_calls += 1
        if self.server.down or self.path != "/metadata":
            return self._reply(503, {"error": "down"})
        auc = {"v-a": 0.71, "v-b": 0.64}[self.server.version]
        self._reply(200, {"model_name": "lstm", "model_version": self.server.version, "metrics": {"test_auc": auc}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.request_ids.append((self.path, self.headers.get("X-Request-ID")))
        if self.server.down:
            return self._reply(503, {"error": "down"})
        head = {"model_name": "lstm", "model_version": self.server.version}
        if self.path == "/predict":
            n = len(body["candidates"])
            preds = [{**c, "probability": round(0.2 + 0.75 * i / n, 6)} for i, c in enumerate(body["candidates"])]
            return self._reply(200, {**head, "predictions": preds})
        if self.path == "/knowledge_state":
            return self._reply(200, {**head, "skills": [{"KnowledgeTag": 1, "mastery": 0.5}]})
        self._reply(200, {**head, "expected_score": 50.0})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[FakeService]:
    with serving(FakeService()) as server:
        yield server


def rows(path: Path, sql: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]


def test_each_prediction_is_logged_and_joined_with_its_answer(tmp_path: Path, sim_dir: Path, fake: FakeService) -> None:
    # At 0.5 this student's five (student, position) seeds draw both explored and chosen questions.
    app = make_app(tmp_path, sim_dir, fake.url, DKT_EXPLORE_RATE=0.5)
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    c = app.test_client()
    page = start(c, "ada")
    shown: list[tuple[str, float, bool]] = []  # (item, the probability the page showed for it, explored)
    texts = ["right", "wrong", "right", "right", None]
    for i, how in enumerate(texts):
        if i == 2:
            fake.version = "v-b"  # a deploy switches models between two questions
        item = current_item(page)
        insights = json.loads(rows(tmp_path / "client.db", "SELECT insights FROM students")[0]["insights"])
        shown.append((item, insights["next_probability"], insights["explored"]))
        if how is not None:
            page = answer(c, page, questions.loc[item, "answer"] if how == "right" else "-999")
    log = rows(tmp_path / "client.db", "SELECT * FROM predictions ORDER BY id")
    answers = rows(tmp_path / "client.db", "SELECT * FROM interactions ORDER BY id")
    assert len(answers) == 4 and len(log) == 5  # the fifth question is shown, not answered yet
    for p, a, (item, prob, _) in zip(log, answers, shown, strict=False):
        assert p["assessmentItemID"] == a["assessmentItemID"] == item
        assert (p["interaction_id"], p["answerCode"]) == (a["id"], a["answerCode"])
        assert p["probability"] == prob and p["role"] == "production" and p["model_name"] == "lstm"
    assert [p["explored"] for p in log] == [int(e) for _, _, e in shown]
    assert {p["explored"] for p in log} == {0, 1}
    assert [a["answerCode"] for a in answers] == [1, 0, 1, 1]
    # The third question was chosen (and predicted) before the switch: it keeps the version that predicted it.
    assert [p["model_version"] for p in log] == ["v-a", "v-a", "v-a", "v-b", "v-b"]
    assert log[4]["interaction_id"] is None and log[4]["answerCode"] is None
    # One request id per page decision, sent with each of its three calls, and the one logged (the knowledge state
    # first: the session rules of client/practice.py need it to choose the next question's skill).
    for p in log:
        assert [path for path, rid in fake.request_ids if rid == p["request_id"]] == [
            "/knowledge_state",
            "/predict",
            "/score",
        ]
    # Each version's /metadata was read once, its test AUC kept.
    versions = rows(tmp_path / "client.db", "SELECT model_version, model_name, test_auc FROM model_versions")
    assert sorted((v["model_version"], v["test_auc"]) for v in versions) == [("v-a", 0.71), ("v-b", 0.64)]
    assert fake.metadata_calls == 2
    # The log travels with the answers: the same watermark as export-interactions.
    out = tmp_path / "predictions.csv"
    res = app.test_cli_runner().invoke(args=["export-predictions", "--since", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    exported = pd.read_csv(out)
    assert list(exported.columns) == list(db.PREDICTION_COLUMNS)
    assert exported["interaction_id"].tolist() == [3, 4] and exported["answerCode"].tolist() == [1, 1]
    assert exported["explored"].tolist() == [log[2]["explored"], log[3]["explored"]]
    assert exported["request_id"].tolist() == [log[2]["request_id"], log[3]["request_id"]]


def test_the_explore_rate_is_honoured_deterministically_per_seed() -> None:
    probs = [0.2 + 0.75 * i / 10 for i in range(10)]
    ids = [f"A{i}" for i in range(10)]
    seeds = range(400)
    for rate in (0.1, 0.25, 0.5):
        n = sum(choose(probs, ids, 0.7, rate, s)[1] for s in seeds)
        assert abs(n - rate * len(seeds)) <= 4 * (len(seeds) * rate * (1 - rate)) ** 0.5  # binomial: 4 sd
    assert sum(choose(probs, ids, 0.7, 0.25, s)[1] for s in seeds) == 101  # the same seeds draw the same
    assert [choose(probs, ids, 0.7, 0.25, s) for s in seeds] == [choose(probs, ids, 0.7, 0.25, s) for s in seeds]
    # Rate 0: always by target difficulty (0.725 is the nearest to 0.7 of these); rate 1: always random, and
    # uniformly so: every candidate drawn about 40 times of 400.
    assert {choose(probs, ids, 0.7, 0.0, s) for s in seeds} == {(7, False)}
    drawn = [choose(probs, ids, 0.7, 1.0, s) for s in seeds]
    assert all(explored for _, explored in drawn)
    counts = pd.Series([i for i, _ in drawn]).value_counts()
    assert sorted(counts.index) == list(range(10)) and counts.between(15, 65).all()


def test_both_roles_of_an_explored_request_are_logged_explored(tmp_path: Path) -> None:
    shadow = {"model_name": "lstm", "model_version": "v-s", "probability": 0.4}
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    sid = db.get_or_create_student(conn, "ed")
    question = {"assessmentItemID": "A1", "testId": "T1", "KnowledgeTag": 7}
    for n, explored in enumerate([True, False]):
        shown = {"available": True, "model_name": "lstm", "model_version": "v-p", "next_probability": 0.9,
                 "explored": explored, "shadow": shadow}  # fmt: skip
        logged = logged_predictions(shown)
        assert [(p["role"], p["explored"]) for p in logged] == [("production", explored), ("shadow", explored)]
        db.set_current(conn, sid, "A1", shown, f"r{n}", logged)
        db.record_answer(conn, sid, question, True, "x")
    scored = db.scored_predictions(conn)
    assert list(zip(scored["request_id"], scored["role"], scored["explored"], strict=True)) == [
        ("r0", "production", 1), ("r0", "shadow", 1), ("r1", "production", 0), ("r1", "shadow", 0)]  # fmt: skip


def test_a_question_shown_while_the_service_is_down_has_no_prediction(
    tmp_path: Path, sim_dir: Path, fake: FakeService
) -> None:
    app = make_app(tmp_path, sim_dir, fake.url)
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    c = app.test_client()
    page = start(c, "bo")
    fake.down = True
    page = answer(c, page, questions.loc[current_item(page), "answer"])  # answered with a prediction
    assert "Predictions are unavailable" in page
    page = answer(c, page, questions.loc[current_item(page), "answer"])  # shown while down: no prediction
    fake.down = False
    page = answer(c, page, "-999")  # shown while down too; the service is back for the next one
    log = rows(tmp_path / "client.db", "SELECT interaction_id, answerCode FROM predictions ORDER BY id")
    assert log == [{"interaction_id": 1, "answerCode": 1}, {"interaction_id": None, "answerCode": None}]
    scored = db.scored_predictions(db.connect(tmp_path / "client.db"))
    assert scored["interaction_id"].tolist() == [1]  # the quality sees only predictions with an answer


def test_an_old_store_gains_the_log_and_a_replaced_question_does_not_take_a_later_answer(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "c.db")
    db.init(conn)
    assert db.schema_version(conn) >= 3  # later migrations add to it
    sid = db.get_or_create_student(conn, "cy")
    item = {"assessmentItemID": "A1", "testId": "T1", "KnowledgeTag": 7}
    other = {"assessmentItemID": "A2", "testId": "T1", "KnowledgeTag": 7}
    pred = [{"model_name": "lstm", "model_version": "v1", "probability": 0.6}]
    db.set_current(conn, sid, "A1", {"available": True}, "r1", pred)
    db.set_current(conn, sid, "A2", {"available": True}, "r2", pred)  # A1 replaced before it was answered
    db.record_answer(conn, sid, other, True, "x")
    db.set_current(conn, sid, "A1", {"available": False}, None, [])  # A1 again, service down this time
    db.record_answer(conn, sid, item, False, "x")
    log = conn.execute("SELECT request_id, interaction_id, answerCode FROM predictions ORDER BY id").fetchall()
    assert [tuple(r) for r in log] == [("r1", None, None), ("r2", 1, 1)]
    with pytest.raises(sqlite3.IntegrityError):  # a probability outside [0, 1] is refused, the question too
        db.set_current(conn, sid, "A2", {}, "r3", [{"model_version": "v1", "probability": 1.5}])
    assert db.student(conn, sid)["current_item"] is None  # type: ignore[index]


@pytest.mark.slow
def test_the_live_service_echoes_the_request_id_and_its_test_auc_reaches_metrics(
    tmp_path: Path, sim_dir: Path, service: Server
) -> None:
    """Against `bentoml serve`: the logged version and test AUC are the bundle's, the id comes back, and the
    online AUC on /metrics is sklearn's on the logged answers."""
    r = requests.post(
        f"{service.url}/score",
        json={"questions": [{"assessmentItemID": "A1", "testId": "T1", "KnowledgeTag": 1}]},
        headers={"X-Request-ID": "abc123"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "abc123"
    meta = requests.get(f"{service.url}/metadata", timeout=30).json()
    app = make_app(tmp_path, sim_dir, service.url, DKT_INFERENCE_TIMEOUT_S=20.0)
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    c = app.test_client()
    page = start(c, "live")
    for i in range(8):
        page = answer(c, page, questions.loc[current_item(page), "answer"] if i % 3 else "-999")
    log = rows(tmp_path / "client.db", "SELECT * FROM predictions WHERE interaction_id IS NOT NULL")
    assert len(log) == 8
    assert {(p["model_name"], p["model_version"]) for p in log} == {(meta["model_name"], meta["model_version"])}
    text = c.get("/metrics").get_data(as_text=True)
    samples = {(s.name, s.labels.get("model_version")): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}  # fmt: skip
    version = meta["model_version"]
    assert samples[("dkt_model_test_auc", version)] == pytest.approx(meta["metrics"]["test_auc"], abs=1e-12)
    assert samples[("dkt_scored_answers_total", version)] == 8
    y = [p["answerCode"] for p in log]
    expected = roc_auc_score(y, [p["probability"] for p in log])
    assert samples[("dkt_online_auc", version)] == pytest.approx(expected, abs=1e-9)
