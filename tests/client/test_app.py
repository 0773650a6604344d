"""The Flask app in-process (Flask test client, CSRF on), with the inference service down."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from flask.testing import FlaskClient

from client.inference import BaseURL, InferenceClient, InferenceUnavailable
from dkt.data.io import read_csv
from tests.client.conftest import make_app
from tests.serving.servers import PY, ROOT


def token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def current_item(html: str) -> str:
    m = re.search(r'name="item" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def start(c: FlaskClient, nickname: str) -> str:
    page = c.get("/").get_data(as_text=True)
    r = c.post("/start", data={"nickname": nickname, "csrf_token": token(page)}, follow_redirects=True)
    assert r.status_code == 200
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
    r = c.post("/start", data={"nickname": "ada"})
    assert r.status_code == 400 and "form expired" in r.get_data(as_text=True)  # no CSRF token
    page = c.get("/").get_data(as_text=True)
    for bad in ("", "x" * 33, "<script>alert(1)</script>"):
        r = c.post("/start", data={"nickname": bad, "csrf_token": token(page)})
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
