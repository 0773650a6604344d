"""The client's /metrics: a store filled through the client's own db functions, scraped through the Flask app and
parsed back with prometheus_client's parser; the online figures checked against sklearn on the same answers."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import log_loss, roc_auc_score

from client import db
from client.metrics import OnlineQualityCollector
from tests.client.conftest import make_app

METRICS = {
    "dkt_online_auc": "gauge",
    "dkt_online_logloss": "gauge",
    "dkt_online_ece": "gauge",
    "dkt_online_accuracy": "gauge",
    "dkt_scored_answers": "counter",
    "dkt_model_test_auc": "gauge",
    "dkt_model_serving": "gauge",
    "dkt_answers": "counter",
    "dkt_last_answer_timestamp_seconds": "gauge",
    "dkt_in_term": "gauge",
}


def fill(path: Path, versions: list[str], seed: int) -> None:
    """Answers, each after a logged prediction of the given version (one student per answer: no shared state)."""
    rng = np.random.default_rng(seed)
    conn = db.connect(path)
    db.init(conn)
    for i, version in enumerate(versions):
        sid = db.get_or_create_student(conn, f"s{seed}-{i}")
        item = {"assessmentItemID": f"A{i % 9}", "testId": "T1", "KnowledgeTag": 7 + i % 3}
        p = float(np.round(rng.random(), 2))
        pred = [{"model_name": "lstm", "model_version": version, "probability": p}]
        db.set_current(conn, sid, item["assessmentItemID"], {"available": True}, f"r{seed}-{i}", pred)
        db.record_answer(conn, sid, item, bool(rng.random() < p), "x")
    conn.close()


def scrape(app: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample (name, sorted labels) -> value; the families' names and types checked against METRICS."""
    r = app.test_client().get("/metrics")  # type: ignore[attr-defined]
    assert r.status_code == 200 and r.mimetype == "text/plain"
    families = list(text_string_to_metric_families(r.get_data(as_text=True)))
    assert {f.name: f.type for f in families} == METRICS
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def logged(path: Path, since: datetime | None = None) -> dict[str, tuple[list[int], list[float]]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT p.model_version, p.answerCode, p.probability, i.answered_at FROM predictions p"
            " JOIN interactions i ON i.id = p.interaction_id ORDER BY p.id"
        ).fetchall()
    out: dict[str, tuple[list[int], list[float]]] = {}
    for version, y, p, answered in rows:
        if since is None or datetime.fromisoformat(answered) >= since:
            out.setdefault(version, ([], []))[0].append(y)
            out[version][1].append(p)
    return out


def test_metrics_are_the_online_quality_of_the_logged_answers(tmp_path: Path, sim_dir: Path, dead_url: str) -> None:
    path = tmp_path / "client.db"
    fill(path, ["v1"] * 60 + ["v2"] * 40, seed=1)
    with sqlite3.connect(path) as conn:  # ten v1 answers from before the window (7 days by default)
        conn.execute("UPDATE interactions SET answered_at = '2020-01-01 08:00:00' WHERE id <= 10")
    db.remember_model_version(db.connect(path), {"model_name": "lstm", "model_version": "v1",
                                                 "metrics": {"test_auc": 0.75}})  # fmt: skip
    app = make_app(tmp_path, sim_dir, dead_url)
    m = scrape(app)
    recent = logged(path, since=db.utc_now() - timedelta(days=7))
    assert len(recent["v1"][0]) == 50
    for version, (y, p) in recent.items():
        labels = (("model_version", version),)
        assert m[("dkt_online_auc", labels)] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
        assert m[("dkt_online_logloss", labels)] == pytest.approx(log_loss(y, p), abs=1e-9)
        assert m[("dkt_online_accuracy", labels)] == pytest.approx(np.mean((np.array(p) >= 0.5) == np.array(y)))
        assert 0 <= m[("dkt_online_ece", labels)] <= 1
    # The counters count every scored answer, the window only bounds the gauges.
    assert m[("dkt_scored_answers_total", (("model_version", "v1"),))] == 60
    assert m[("dkt_scored_answers_total", (("model_version", "v2"),))] == 40
    assert m[("dkt_answers_total", ())] == 100
    assert m[("dkt_model_test_auc", (("model_version", "v1"),))] == 0.75
    assert ("dkt_model_test_auc", (("model_version", "v2"),)) not in m  # its /metadata was never read
    assert m[("dkt_model_serving", (("model_version", "v2"), ("role", "production")))] == 1
    assert m[("dkt_in_term", ())] == 1  # no term dates: always in term
    with sqlite3.connect(path) as conn:
        last = conn.execute("SELECT answered_at FROM interactions ORDER BY id DESC LIMIT 1").fetchone()[0]
    expected = (datetime.fromisoformat(last) - datetime(1970, 1, 1)).total_seconds()
    assert m[("dkt_last_answer_timestamp_seconds", ())] == pytest.approx(expected, abs=1e-3)

    # Another worker's answer (another app on the same store) shows at the next scrape of this one.
    fill(path, ["v2"], seed=2)
    after = scrape(make_app(tmp_path, sim_dir, dead_url, DKT_METRICS_WINDOW_DAYS=0))
    assert after[("dkt_scored_answers_total", (("model_version", "v2"),))] == 41
    assert scrape(app)[("dkt_scored_answers_total", (("model_version", "v2"),))] == 41
    y, p = logged(path)["v1"]  # window 0: every answer
    assert after[("dkt_online_auc", (("model_version", "v1"),))] == pytest.approx(roc_auc_score(y, p), abs=1e-9)


def test_empty_store_and_term_dates(tmp_path: Path, sim_dir: Path, dead_url: str) -> None:
    today = db.utc_now().date()  # the collector's clock: UTC
    past = f"{today - timedelta(days=30)}..{today - timedelta(days=10)}"
    m = scrape(make_app(tmp_path, sim_dir, dead_url, DKT_TERM_DATES=past))
    assert m == {("dkt_answers_total", ()): 0, ("dkt_in_term", ()): 0}
    around = f"{past},{today - timedelta(days=1)}..{today + timedelta(days=1)}"
    assert scrape(make_app(tmp_path, sim_dir, dead_url, DKT_TERM_DATES=around))[("dkt_in_term", ())] == 1
    fill(tmp_path / "client.db", ["v1", "v1"], seed=3)  # two answers: AUC undefined if both agree, never NaN
    m = scrape(make_app(tmp_path, sim_dir, dead_url))
    y, _ = logged(tmp_path / "client.db")["v1"]
    assert (("dkt_online_auc", (("model_version", "v1"),)) in m) == (len(set(y)) == 2)


def test_the_window_moves_with_the_clock_and_counters_keep_counting(tmp_path: Path) -> None:
    path = tmp_path / "client.db"
    fill(path, ["v1"] * 30, seed=5)
    clock = [db.utc_now()]
    reg = CollectorRegistry(auto_describe=False)
    reg.register(OnlineQualityCollector(str(path), 1.0, "", now=lambda: clock[0]))

    def values() -> dict[str, float]:
        text = generate_latest(reg).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    y, p = logged(path)["v1"]
    assert values()["dkt_online_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    clock[0] += timedelta(days=2)  # the 30 answers now lie before the one-day window
    fill(path, ["v1"] * 12, seed=6)
    with sqlite3.connect(path) as conn:  # 12 new answers, arriving at the moved clock
        conn.execute("UPDATE interactions SET answered_at = ? WHERE id > 30", (clock[0].isoformat(sep=" "),))
    later = values()
    assert later["dkt_scored_answers_total"] == 42  # counted, whatever the window
    y, p = (v[-12:] for v in logged(path)["v1"])
    assert later["dkt_online_logloss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    clock[0] += timedelta(days=2)
    assert "dkt_online_logloss" not in values()
