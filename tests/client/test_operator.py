"""The operator page in-process (Flask test client, CSRF on): access by token or operator session, each panel's
data from a store filled through client/db.py (a clock moved per day), a real local versioned store for lineage,
promotions and drift, and the SVG read back (a point per day, a bar per day, axis labels)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from client import db, operator, plots
from dkt.quality import quality
from pipeline import promotions
from pipeline.blobs import LocalBlobStore
from pipeline.drift import store_report
from pipeline.store import VersionedStore
from tests.client.conftest import make_app, serving
from tests.serving.servers import free_port

TOKEN = "op-token-3f9a1c"
# Answer days relative to today (UTC): the page's reliability and table cover DKT_METRICS_WINDOW_DAYS (7) up to now.
DAYS = tuple((db.utc_now().date() - timedelta(days=k)).isoformat() for k in (6, 5, 4, 2))  # none 3 days ago
PER_DAY = 30


def fill(path: Path, monkeypatch: pytest.MonkeyPatch, seed: int = 0) -> None:
    """Per day, PER_DAY students answer one question each after a production (v1, informative) and a shadow (v2,
    noise) prediction; the clock the client's db functions read is moved to that day."""
    rng = np.random.default_rng(seed)
    conn = db.connect(path)
    db.init(conn)
    for d, day in enumerate(DAYS):
        for k in range(PER_DAY):
            at = datetime.fromisoformat(day) + timedelta(hours=9, minutes=k)
            monkeypatch.setattr(db, "utc_now", lambda at=at: at)  # the client's own clock, moved to that day
            sid = db.get_or_create_student(conn, f"s{d}-{k}")
            item = {"assessmentItemID": f"A{k % 9}", "testId": "T1", "KnowledgeTag": 7 + k % 3}
            truth = float(rng.random())
            preds = [
                {"role": "production", "model_name": "lstm", "model_version": "v1",
                 "probability": float(np.clip(truth + rng.normal(0, 0.15), 0, 1))},
                {"role": "shadow", "model_name": "lstm", "model_version": "v2", "probability": float(rng.random())},
            ]  # fmt: skip
            db.set_current(conn, sid, item["assessmentItemID"], {"available": True}, f"r{d}-{k}", preds)
            db.record_answer(conn, sid, item, bool(rng.random() < truth), "x")
    conn.close()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Filled once for the module (the tests only read it): 240 committed transactions cost seconds under load."""
    path = tmp_path_factory.mktemp("operator") / "client.db"
    with pytest.MonkeyPatch.context() as monkeypatch:
        fill(path, monkeypatch)
    return path


@pytest.fixture
def conn(filled: Path) -> Iterator[sqlite3.Connection]:
    c = db.connect(filled)
    yield c
    c.close()


def csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:400]
    return m.group(1)


def no_store() -> Any:
    raise LookupError("no store on this host (test)")


# -- access -------------------------------------------------------------------------------------------------
def test_without_a_token_the_page_is_disabled_but_an_operator_session_gets_in(tmp_path: Path, sim_dir: Path) -> None:
    app = make_app(tmp_path, sim_dir, "http://127.0.0.1:9")
    c = app.test_client()
    for path in ("/operator", "/operator/login"):
        r = c.get(path)
        assert r.status_code == 404 and "operator page is disabled" in r.get_data(as_text=True)
    r = c.post("/operator/login", data={"token": "", "csrf_token": "x"})
    assert r.status_code in (400, 404)  # CSRF first (400), never a way in
    with c.session_transaction() as s:  # an operator account (client/accounts.py) sets the same key
        s["role"] = "operator"
    r = c.get("/operator")
    assert r.status_code == 200 and 'data-panel="quality"' in r.get_data(as_text=True)


def test_token_login_wrong_then_right_then_logout(tmp_path: Path, sim_dir: Path) -> None:
    app = make_app(tmp_path, sim_dir, "http://127.0.0.1:9", DKT_OPERATOR_TOKEN=TOKEN)
    c = app.test_client()
    r = c.get("/operator")
    assert r.status_code == 302 and r.headers["Location"].endswith("/operator/login")
    form = c.get("/operator/login").get_data(as_text=True)
    assert 'name="token"' in form and 'type="password"' in form
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        r = c.post("/operator/login", data={"token": wrong, "csrf_token": csrf(form)})
        body = r.get_data(as_text=True)
        assert r.status_code == 403 and "Access denied." in body
        assert "token" not in body.lower().replace('name="csrf_token"', "")  # no hint about what was wrong
        assert c.get("/operator").status_code == 302
    r = c.post("/operator/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 400  # no CSRF token: refused before the token is looked at
    with c.session_transaction() as sess:
        sess["student_id"] = 5  # signed in as someone else in this browser
    r = c.post("/operator/login", data={"token": TOKEN, "csrf_token": csrf(form)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/operator")
    with c.session_transaction() as sess:
        assert dict(sess) == {"role": "operator"} | ({"csrf_token": sess["csrf_token"]} if "csrf_token" in sess else {})
    page = c.get("/operator")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert [m for m in re.findall(r'data-panel="([a-z]+)"', html)] == [
        "quality", "answers", "latency", "lineage", "promotions", "drift"
    ]  # fmt: skip
    assert "Prometheus not configured" in html
    assert 'action="/logout"' in html  # the page's "Log out" is the app's: the whole session ends
    c.post("/logout", data={"csrf_token": csrf(html)})
    assert c.get("/operator").status_code == 302


def test_token_compare() -> None:
    assert operator.token_matches(TOKEN, TOKEN)
    assert not operator.token_matches("", "")  # an unset token never lets anyone in
    assert not operator.token_matches(TOKEN, "")
    assert not operator.token_matches("ø" + TOKEN, TOKEN)  # non-ASCII input compares as bytes, no TypeError


# -- online quality -----------------------------------------------------------------------------------------
def logged(conn: sqlite3.Connection, role: str, day: str | None = None) -> tuple[list[float], list[int]]:
    rows = conn.execute(
        "SELECT p.probability, p.answerCode FROM predictions p JOIN interactions i ON i.id = p.interaction_id"
        " WHERE p.role = ? AND (? IS NULL OR substr(i.answered_at, 1, 10) = ?) ORDER BY p.id",
        (role, day, day),
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def test_daily_quality_per_role_and_version_matches_sklearn_on_the_stored_rows(conn: sqlite3.Connection) -> None:
    daily = operator.daily_quality(db.scored_predictions(conn))
    assert [(r["role"], r["model_version"], r["day"]) for r in daily] == [
        (role, version, day) for role, version in (("production", "v1"), ("shadow", "v2")) for day in DAYS
    ]
    for r in daily:
        p, y = logged(conn, r["role"], r["day"])
        assert r["n"] == len(p) == PER_DAY
        assert r["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert r["ece"] == pytest.approx(quality(p, y).ece, abs=1e-12)
    # Only the days shown: since the third day, two days remain per series.
    assert {r["day"] for r in operator.daily_quality(db.scored_predictions(conn), DAYS[2])} == set(DAYS[2:])


def test_version_quality_window_intervals_and_reliability(conn: sqlite3.Connection) -> None:
    scored = db.scored_predictions(conn)
    rows = operator.version_quality(scored, n_boot=50)
    assert [(r["role"], r["model_version"], r["n"]) for r in rows] == [
        ("production", "v1", 4 * PER_DAY), ("shadow", "v2", 4 * PER_DAY)
    ]  # fmt: skip
    p, y = logged(conn, "production")
    v1 = rows[0]
    assert v1["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert v1["ci"]["auc"][0] <= v1["auc"] <= v1["ci"]["auc"][1]
    assert len(v1["reliability"]) == 10 and sum(b["n"] for b in v1["reliability"]) == 4 * PER_DAY
    # The window counts from `since` on answered_at, as /metrics does: the last day only.
    last = operator.version_quality(scored, since=datetime.fromisoformat(DAYS[-1]), n_boot=0)
    assert [r["n"] for r in last] == [PER_DAY, PER_DAY]


def points(svg: str, series: str) -> list[tuple[float, float]]:
    group = re.search(rf'<g class="series" data-series="{re.escape(series)}">(.*?)</g>', svg)
    assert group, f"no series {series!r}"
    return [(float(x), float(y)) for x, y in re.findall(r'data-x="([^"]+)" data-y="([^"]+)"', group.group(1))]


def test_quality_plots_have_a_point_per_day_per_series_and_axis_labels(conn: sqlite3.Connection) -> None:
    panel = operator.Panel("quality", "q")
    versions = operator.quality_panel(panel, db.scored_predictions(conn), 0)
    assert panel.message is None and len(panel.plots) == 3
    auc_svg, ece_svg, rel_svg = map(str, panel.plots)
    assert 'data-plot="auc-per-day"' in auc_svg and 'data-plot="ece-per-day"' in ece_svg
    assert 'data-plot="reliability"' in rel_svg
    for svg, metric in ((auc_svg, "auc"), (ece_svg, "ece")):
        assert svg.count('<g class="series"') == 2
        assert ">day of the answer (UTC)</text>" in svg and f">{metric.upper()}</text>" in svg
        assert all(f">{d[5:]}</text>" in svg for d in DAYS)  # a tick per day (the day without answers too)
        daily = {(r["day"], r["role"]): r[metric] for r in operator.daily_quality(db.scored_predictions(conn))}
        got = points(svg, "v1 (production)")
        assert len(got) == len(DAYS)  # a point per day
        assert [y for _, y in got] == pytest.approx([daily[(d, "production")] for d in DAYS], abs=1e-4)
    assert 'stroke-dasharray="5 3"' in auc_svg  # the shadow's line is dashed
    # Reliability: a point per non-empty bin, at (mean predicted probability, observed rate).
    bins = [b for b in versions[0]["reliability"] if b["n"]]
    got = [v for point in points(rel_svg, "v1 (production)") for v in point]
    assert got == pytest.approx([v for b in bins for v in (b["mean_probability"], b["observed"])], abs=1e-4)
    assert ">mean predicted probability</text>" in rel_svg and 'class="diagonal"' in rel_svg
    assert [row[:3] for row in panel.rows] == [["v1", "production", 120], ["v2", "shadow", 120]]


def test_answers_per_day_fills_gaps_and_plots_a_bar_per_day(conn: sqlite3.Connection) -> None:
    per_day = operator.answers_per_day(conn)
    # The day between DAYS[2] and DAYS[3], from DAYS (set at import): a run that crosses midnight keeps it.
    gap = (date.fromisoformat(DAYS[3]) - timedelta(days=1)).isoformat()
    assert per_day == [(DAYS[0], 30), (DAYS[1], 30), (DAYS[2], 30), (gap, 0), (DAYS[3], 30)]
    assert operator.answers_per_day(conn, days=2) == per_day[-2:]
    panel = operator.Panel("answers", "a")
    operator.answers_panel(panel, conn)
    svg = str(panel.plots[0])
    assert svg.count('class="plot-bar"') == 5 and f'data-x="{gap[5:]}" data-y="0"' in svg
    assert ">answers</text>" in svg and ">day (UTC)</text>" in svg


def test_empty_store_says_so_in_each_panel(tmp_path: Path) -> None:
    c = db.connect(tmp_path / "empty.db")
    db.init(c)
    panels = {p.key: p for p in operator.build_page(c, None, 7, store_fn=no_store)}
    assert "No scored answers yet" in (panels["quality"].message or "")
    assert panels["answers"].message == "No answers stored yet."
    assert panels["latency"].message == "Prometheus not configured (set DKT_PROMETHEUS_URL)."
    for key in ("lineage", "promotions", "drift"):
        assert panels[key].message == "Unavailable: no store on this host (test)"


# -- latency ------------------------------------------------------------------------------------------------
class PrometheusAPI(BaseHTTPRequestHandler):
    """Answers /api/v1/query_range as Prometheus 2.42 does: a matrix with values as [unix time, "string"]."""

    answer: ClassVar[dict[str, Any]] = {}
    queries: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        q = parse_qs(urlparse(self.path).query)
        type(self).queries.append(q["query"][0])
        body = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_latency_panel_reads_the_query_api_and_degrades_when_prometheus_is_down() -> None:
    t0 = 1_764_000_000.0
    PrometheusAPI.answer = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[t0, "0.004"], [t0 + 60, "NaN"], [t0 + 120, "0.0125"]]}]}}  # fmt: skip
    with serving(HTTPServer(("127.0.0.1", 0), PrometheusAPI)) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        series = operator.latency_series(url, end=t0 + 120)
        assert series == {"p50": [(t0, 0.004), (t0 + 120, 0.0125)], "p99": [(t0, 0.004), (t0 + 120, 0.0125)]}
        assert any("histogram_quantile(0.99" in q and "bentoml_service_request_duration_seconds_bucket" in q
                   for q in PrometheusAPI.queries)  # fmt: skip
        panel = operator.Panel("latency", "l")
        operator.latency_panel(panel, url)
        assert panel.message is None and str(panel.plots[0]).count('<g class="series"') == 2
        assert panel.rows[0] == ["p50", "12.5", "12.5"]
    panel = operator.Panel("latency", "l")
    operator.latency_panel(panel, f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert (panel.message or "").startswith("Prometheus at http://127.0.0.1:") and "unavailable" in panel.message


# -- the store: lineage, promotions, drift ------------------------------------------------------------------
def fill_store(root: Path) -> VersionedStore:
    """A real local store under ``root``: data versions d1 <- d2, models v1 (production, on d1) <- v2 (latest,
    on d2), one promotion decision (pipeline/promotions.py) and d2's drift report (pipeline/drift.py)."""
    root.mkdir(parents=True)
    s = VersionedStore(LocalBlobStore(root / "store"))
    tmp_path = root / "src"  # the files pushed
    for version, parent in (("d1", None), ("d2", "d1")):
        src = tmp_path / version
        src.mkdir(parents=True)
        (src / "interactions.csv").write_text("userID,answerCode\nu1,1\nu2,0\n")
        s.push("datasets", src, version, parent=parent)
    for version, data, parent, auc in (("v1", "d1", None, 0.71), ("v2", "d2", "v1", 0.74)):
        src = tmp_path / version
        src.mkdir(parents=True)
        (src / "weights.pt").write_bytes(version.encode())
        extra = {"model": {"name": "lstm"}, "data_version": data, "code_commit": "0123456789abcdef" + version}
        s.push("models", src, version, parent=parent, metrics={"test_auc": auc}, extra=extra)
    s.set_pointer("models", "production", "v1")
    figures = {"n": 400, "candidate_auc": 0.74, "production_auc": 0.71, "diff": -0.03, "diff_ci95": [-0.05, -0.01],
               "min_answers": 200}  # fmt: skip
    promotions.record(s, promotions.entry("holdout", "v2", "v1", False, "held back by hand in this test", figures))
    store_report(s, {"data_version": "d2", "reference_version": "d1", "reference": "production's training data",
                     "production_version": "v1", "production_test_auc": 0.71, "created_at": "2026-11-24T10:00:00Z",
                     "reference_answers": 2, "new_answers": 2, "max_psi": 0.31, "max_feature": "answer_rate",
                     "threshold": 0.2, "min_answers": 1, "retrain": True, "reason": "answer_rate PSI 0.31 >= 0.2",
                     "features": {"answer_rate": {"psi": 0.31}, "tag_mix": {"psi": 0.02}},
                     "production_auc": {"auc": 0.69, "n": 2}})  # fmt: skip
    return s


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VersionedStore:
    """``fill_store``'s store, named by the store settings (the page opens the store of DKT_STORE, ...)."""
    s = fill_store(tmp_path / "filled")
    monkeypatch.setenv("DKT_STORE", "local")
    monkeypatch.setenv("DKT_STORE_ROOT", str(tmp_path / "filled" / "store"))
    return s


def test_store_panels_show_lineage_promotions_and_drift(store: VersionedStore, conn: sqlite3.Connection) -> None:
    panels = {p.key: p for p in operator.build_page(conn, None, 0)}  # the store of the settings (the fixture's)
    lineage = panels["lineage"]
    assert lineage.message is None, lineage.message
    by_version = {r[0]: r for r in lineage.rows}
    assert list(by_version) == ["v2", "v1"]  # newest first
    assert by_version["v2"][1:6] == ["latest, serving shadow", "d2", "v1", "0123456789ab", "lstm"]
    assert by_version["v1"][1] == "production, serving production" and by_version["v1"][6] == "0.7100"
    assert by_version["v1"][7] != "-"  # its online AUC beside the offline one
    assert "d2 <- d1 (2 rows) [latest]; d1 (2 rows)" in lineage.notes[0]
    svg = str(lineage.plots[0])
    assert points(svg, "offline test AUC") == [(0.0, 0.71), (1.0, 0.74)] and ">v1</text>" in svg

    promo = panels["promotions"]
    assert promo.message is None, promo.message
    assert promo.rows == [[promo.rows[0][0], "holdout", "v2", "v1", "no", 400, "0.7400", "0.7100",
                           "-0.0300 [-0.0500, -0.0100]", "held back by hand in this test"]]  # fmt: skip
    svg = str(promo.plots[0])
    assert points(svg, "candidate AUC") == [(0.0, 0.74)] and points(svg, "production AUC") == [(0.0, 0.71)]

    drift = panels["drift"]
    assert drift.message is None, drift.message
    svg = str(drift.plots[0])
    assert svg.count('class="plot-bar"') == 2 and 'class="threshold"' in svg and "threshold 0.2" in svg
    assert drift.rows == [["answer_rate", "0.3100"], ["tag_mix", "0.0200"]]
    assert any("Retrain: yes" in n for n in drift.notes)


def test_a_slow_store_costs_each_panel_at_most_its_deadline(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operator, "SOURCE_TIMEOUT_S", 0.2)
    page_built = threading.Event()
    opened = []

    def slow() -> Any:
        # Answers only once the page is built (or after a minute): a page that waited for it would be built with
        # the store's answer, and the panels below would not say it did not answer. No timing is asserted.
        opened.append(page_built.wait(60))
        raise LookupError("answered after the page")

    panels = {p.key: p for p in operator.build_page(conn, None, 0, store_fn=slow)}
    page_built.set()
    for key in ("lineage", "promotions", "drift"):
        assert panels[key].message == "Unavailable: the store did not answer within 0.2 s"
    assert panels["quality"].plots  # the rest of the page is there
    deadline = time.monotonic() + 60
    while not opened and time.monotonic() < deadline:
        time.sleep(0.01)
    assert opened == [True]  # opened once for the three panels, and still waiting when the page was done


def test_a_failing_panel_says_why_and_the_others_render(conn: sqlite3.Connection) -> None:
    def broken(panel: operator.Panel) -> None:
        raise KeyError("figures")

    panel = operator.guarded("x", "x", broken)
    assert panel.message == "Could not build this panel: KeyError: 'figures'"


# -- plots --------------------------------------------------------------------------------------------------
def test_plots_escape_labels_and_refuse_empty_input() -> None:
    svg = str(plots.line_chart([plots.Series("<v1>", [(0, 0.5), (1, 0.6)])], "a & b", "x", "y"))
    assert "&lt;v1&gt;" in svg and "a &amp; b" in svg and "<v1>" not in svg
    with pytest.raises(ValueError, match="no points"):
        plots.line_chart([plots.Series("s", [])], "t", "x", "y")
    with pytest.raises(ValueError, match="no bars"):
        plots.bar_chart([], "t", "x", "y")
    assert plots.ticks(0.0, 1.0) == [0.0, 0.5, 1.0]  # steps of 1, 2 or 5 x 10^k, no more than n ticks
    assert plots.ticks(0.0, 1.0, 6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.ticks(0.31, 0.87) == [0.4, 0.6, 0.8]
