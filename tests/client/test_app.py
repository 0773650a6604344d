"""The Flask app in-process (Flask test client, CSRF on), with the inference service down or recorded."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flask.testing import FlaskClient

from client.inference import BaseURL, InferenceClient, InferenceUnavailable
from dkt.data.io import read_csv
from dkt.data.schema import COLUMNS
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
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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
