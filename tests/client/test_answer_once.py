"""Answers exactly once through the page (one-time token per shown question), and a page that a slow, dripping
or short-answering inference service cannot hang or break: a real HTTP server of the test's own plays it."""

from __future__ import annotations

import re
import sqlite3
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flask.testing import FlaskClient

from client import db
from tests.client.conftest import make_app, serving
from tests.client.test_app import Recorder


def field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, html[:800]
    return m.group(1)


def signed_in(app: Any, tmp_path: Path, nickname: str) -> FlaskClient:
    """A student signed in (the session the sign-in page sets), without going through the sign-in forms."""
    with db.connect(tmp_path / "client.db") as conn:
        sid = db.get_or_create_student(conn, nickname)
    c = app.test_client()
    with c.session_transaction() as sess:
        sess["student_id"] = sid
    return c


def form(page: str, answer: str) -> dict[str, str]:
    return {"item": field(page, "item"), "token": field(page, "token"), "answer": answer,
            "csrf_token": field(page, "csrf_token")}  # fmt: skip


def rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "client.db") as conn:
        return conn.execute("SELECT assessmentItemID, given, answerCode FROM interactions ORDER BY id").fetchall()


def test_a_form_submitted_twice_is_stored_once_and_shows_the_recorded_result(
    tmp_path: Path, sim_dir: Path, dead_url: str
) -> None:
    app = make_app(tmp_path, sim_dir, dead_url)
    answers = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")["answer"]
    tab1 = signed_in(app, tmp_path, "ada")
    page = tab1.get("/practice").get_data(as_text=True)
    tab2 = app.test_client()  # a second tab: same cookie, the same question's form
    tab2.set_cookie("session", tab1.get_cookie("session").value)  # type: ignore[union-attr]
    first = form(page, answers[field(page, "item")])
    r1 = tab1.post("/answer", data=first, follow_redirects=True).get_data(as_text=True)
    assert "Correct!" in r1 and "already recorded" not in r1
    r2 = tab2.post("/answer", data={**first, "answer": "-1"}, follow_redirects=True)
    assert r2.status_code == 200
    text = r2.get_data(as_text=True)
    assert "Correct!" in text and "this answer was already recorded" in text  # the recorded result, not "-1"
    # The back button: the first form again, after the next question was answered too.
    r3 = tab1.post("/answer", data=form(r1, "-7"), follow_redirects=True).get_data(as_text=True)
    assert "Not quite" in r3
    again = tab1.post("/answer", data=first, follow_redirects=True).get_data(as_text=True)
    assert "already recorded" in again and field(again, "item") == field(r3, "item")
    assert rows(tmp_path) == [(first["item"], first["answer"], 1), (field(r1, "item"), "-7", 0)]
    # A form without the token field (rendered before the upgrade): it answers the question on show, once.
    old_form = {k: v for k, v in form(r3, "-55").items() if k != "token"}
    assert "already recorded" not in tab1.post("/answer", data=old_form, follow_redirects=True).get_data(as_text=True)
    again = tab1.post("/answer", data=old_form, follow_redirects=True).get_data(as_text=True)
    assert "already answered" in again and rows(tmp_path)[2:] == [(old_form["item"], "-55", 0)]


class Drip(ThreadingHTTPServer):
    """An inference service that answers every request, but a byte every ``gap`` s: headers or body."""

    daemon_threads = True

    def __init__(self, where: str, gap: float = 0.05, lasts: float = 120.0) -> None:
        super().__init__(("127.0.0.1", 0), _DripHandler)
        self.where, self.gap, self.lasts = where, gap, lasts
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DripHandler(BaseHTTPRequestHandler):
    server: Drip

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
        drip = b"X-Slow: " + b"a" * 100000 if self.server.where == "headers" else b""
        if drip:
            self.wfile.write(head)
        else:
            self.wfile.write(head + b"\r\n")
        stop = time.monotonic() + self.server.lasts
        i = 0
        try:
            while time.monotonic() < stop:
                self.wfile.write(drip[i : i + 1] if drip else b" ")
                self.wfile.flush()
                i += 1
                time.sleep(self.server.gap)
        except OSError:
            pass  # the client hung up: what the deadline is for

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_service_cannot_hang_the_page(tmp_path: Path, sim_dir: Path, where: str) -> None:
    deadline = 1.5
    with serving(Drip(where)) as drip:
        app = make_app(tmp_path, sim_dir, drip.url, DKT_INFERENCE_DEADLINE_S=deadline, DKT_INFERENCE_TIMEOUT_S=0.5)
        c = signed_in(app, tmp_path, "bo")
        began = time.monotonic()
        page = c.get("/practice").get_data(as_text=True)
        shown_s = time.monotonic() - began
        began = time.monotonic()
        r = c.post("/answer", data=form(page, "3"))
        answered_s = time.monotonic() - began
        print(f"dripping {where}: deadline {deadline}s, /practice {shown_s:.2f}s, /answer {answered_s:.2f}s")
        assert drip.requests >= 1  # it was asked, and dripped
    assert r.status_code == 302
    # Within the deadline plus a margin, on a loaded machine: a hang (minutes before the deadline) fails here.
    assert shown_s < 30 and answered_s < 30
    assert "Predictions are unavailable right now" in page
    assert len(rows(tmp_path)) == 1


def test_too_few_predictions_is_a_degraded_page_and_one_row(tmp_path: Path, sim_dir: Path) -> None:
    service = Recorder()
    service.short_by = 1
    with serving(service):
        app = make_app(tmp_path, sim_dir, service.url)
        c = signed_in(app, tmp_path, "cy")
        page = c.get("/practice")
        assert page.status_code == 200 and "Predictions are unavailable right now" in page.get_data(as_text=True)
        sent = form(page.get_data(as_text=True), "3")
        for _ in range(2):  # the submit, and a retry of it
            r = c.post("/answer", data=sent, follow_redirects=True)
            assert r.status_code == 200 and "Predictions are unavailable right now" in r.get_data(as_text=True)
    assert len(rows(tmp_path)) == 1
