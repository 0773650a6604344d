"""The student page end to end: gunicorn + the live `bentoml serve` + headless Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.client import a11y
from tests.client.browser import chart, client_env, shot, sign_up, solve, submit
from tests.serving.servers import Server, bentoml_env, bentoml_service, free_port, gunicorn_client, together

pytestmark = pytest.mark.slow


def test_student_answers_and_sees_the_knowledge_state_update(
    service: Server, sim_dir: Path, tmp_path: Path, browser_page: object
) -> None:
    page = browser_page
    url_file = tmp_path / "inference_url"
    url_file.write_text(service.url)
    with gunicorn_client(client_env(tmp_path, sim_dir, url_file), tmp_path / "gunicorn.log") as web:
        sign_up(page, web.url, "ada")
        page.wait_for_selector("#knowledge-chart")  # type: ignore[attr-defined]
        states = [chart(page)]
        assert len(states[0]) == 16 and all(0 < v < 1 for v in states[0].values())
        for i in range(4):
            question = page.inner_text("#question-text")  # type: ignore[attr-defined]
            right = i % 2 == 0
            submit(page, solve(question) if right else "-1")
            flash = page.inner_text(".flash")  # type: ignore[attr-defined]
            assert ("Correct!" in flash) == right, flash
            states.append(chart(page))
            assert "%" in page.inner_text("#next-chance")  # type: ignore[attr-defined]
            assert "/100" in page.inner_text("#test-score")  # type: ignore[attr-defined]
        # Each answer moves the model's view of the student: the chart is redrawn with new values.
        for before, after in itertools.pairwise(states):
            assert before.keys() == after.keys() and before != after
        # Refreshing the page does not change the question or store anything.
        q = page.inner_text("#question-text")  # type: ignore[attr-defined]
        page.reload()  # type: ignore[attr-defined]
        assert page.inner_text("#question-text") == q  # type: ignore[attr-defined]
        assert "2/4 correct" in page.inner_text("header")  # type: ignore[attr-defined]
        a11y.check(page, "the practice page")
        shot(page, tmp_path, "practice")


def test_service_stopped_then_switched(
    packed: object, service: Server, sim_dir: Path, tmp_path: Path, browser_page: object
) -> None:
    """A student keeps practising while the service is stopped; after a URL-file switch predictions return."""
    page = browser_page
    url_file = tmp_path / "inference_url"
    # Its own BENTOML_HOME (the models linked in): `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir
    # when it starts, which would leave the session's service counting into deleted files (its /metrics frozen for
    # every later test, the operator page's latency among them).
    home = tmp_path / "own-bentoml-home"
    home.mkdir()
    (home / "models").symlink_to(Path(packed.home) / "models")  # type: ignore[attr-defined]
    env = bentoml_env(home, packed.model_tag)  # type: ignore[attr-defined]
    own_service = bentoml_service("service:DKTService", env, tmp_path / "own-bentoml.log")
    client = gunicorn_client(client_env(tmp_path, sim_dir, url_file), tmp_path / "gunicorn.log")
    with together(own_service, client) as (own, web):  # booting side by side; the client reads the file per request
        url_file.write_text(own.url)
        sign_up(page, web.url, "grace")
        page.wait_for_selector("#knowledge-chart")  # type: ignore[attr-defined]
        own.stop()  # the inference service goes away mid-session
        submit(page, solve(page.inner_text("#question-text")))  # type: ignore[attr-defined]
        assert page.is_visible("#predictions-unavailable")  # type: ignore[attr-defined]
        assert "Correct!" in page.inner_text(".flash")  # type: ignore[attr-defined]
        shot(page, tmp_path, "service-down")
        # A second answer while the service is still down: "0" is right only when the question says so,
        # and the page must grade it either way (the grading does not need the model).
        zero_right = solve(page.inner_text("#question-text")) == "0"  # type: ignore[attr-defined]
        submit(page, "0")
        flash = page.inner_text(".flash")  # type: ignore[attr-defined]
        assert ("Correct!" if zero_right else "Not quite") in flash, flash
        # The pipeline's switch: the URL file now names the other (running) service.
        url_file.write_text(service.url)
        page.reload()  # type: ignore[attr-defined]
        page.wait_for_selector("#knowledge-chart")  # type: ignore[attr-defined]
        assert f"{1 + zero_right}/2 correct" in page.inner_text("header")  # type: ignore[attr-defined]
    with sqlite3.connect(tmp_path / "client.db") as conn:
        rows = conn.execute("SELECT userID, answerCode FROM interactions ORDER BY id").fetchall()
    # Both answers given while the service was down were kept, each graded as the page showed it.
    assert [code for _, code in rows] == [1, int(zero_right)]
    assert rows[0][0] == rows[1][0]  # ...for the same student


def test_operator_page_plots_in_the_browser_with_a_real_prometheus(
    service: Server, sim_dir: Path, tmp_path: Path, browser_page: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator logs in with the token in Chromium and sees every panel's plots: online quality from a log
    written through client/db.py, lineage/promotions/drift from a real local store, and the live service's
    latency through a real Prometheus (pipeline.prometheus, as `make up` starts it) scraping it."""
    import requests

    from client import operator
    from pipeline import prometheus
    from tests.client.test_operator import TOKEN, fill, fill_store

    page = browser_page
    fill(tmp_path / "client.db", monkeypatch)
    monkeypatch.undo()  # fill moved the client's clock; the servers below run on the real one
    fill_store(tmp_path / "filled")
    url_file = tmp_path / "inference_url"
    url_file.write_text(service.url)
    prom_port = free_port()
    env = {**client_env(tmp_path, sim_dir, url_file), "DKT_OPERATOR_TOKEN": TOKEN, "DKT_STORE": "local",
           "DKT_STORE_ROOT": str(tmp_path / "filled" / "store"),
           "DKT_PROMETHEUS_URL": f"http://127.0.0.1:{prom_port}"}  # fmt: skip
    with gunicorn_client(env, tmp_path / "gunicorn.log", workers=1) as web:
        # 10 s, not 1 s: the scrape timeout is the interval, and in the full suite (the session's service has served
        # every earlier test: many series) under CI load a 1 s scrape of its /metrics timed out again and again, so
        # no two samples ever showed the histogram grow (alone, on a fresh service, 1 s passed).
        settings = {"DKT_PROMETHEUS_PORT": str(prom_port), "DKT_PROMETHEUS_SCRAPE_INTERVAL": "10s",
                    "DKT_SERVE_PORT": service.url.rsplit(":", 1)[1], "DKT_CLIENT_PORT": web.url.rsplit(":", 1)[1],
                    "DKT_VAR_DIR": str(tmp_path / "var"), "DKT_RUN_DIR": str(tmp_path / "run")}  # fmt: skip
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        assert prometheus.main(["up"]) == 0
        try:
            prom = env["DKT_PROMETHEUS_URL"]

            def service_scraped() -> bool:
                r = requests.get(prom + "/api/v1/query", params={"query": 'up{job="inference"} == 1'}, timeout=10)
                return bool(r.json()["data"]["result"])

            poll("Prometheus scrapes the service", service_scraped)
            # Traffic all along until a latency point shows: a rate needs the histogram to grow between two scrapes,
            # and a burst sent before the first scrape that sees the series (it only exists once /predict has been
            # called) would leave every later scrape equal: a rate of 0, a NaN quantile, no point.
            stop, statuses = threading.Event(), []

            def traffic() -> None:
                while not stop.is_set():
                    with contextlib.suppress(requests.RequestException):
                        statuses.append(requests.post(service.url + "/predict", json={"candidates": [
                            {"assessmentItemID": "A060001001", "testId": "A060000001", "KnowledgeTag": 7224}]},
                            timeout=30).status_code)  # fmt: skip
                    stop.wait(0.2)

            def latency_point() -> bool:
                if all(operator.latency_series(prom).values()):
                    return True
                queries = ('up{job="inference"}', 'count_over_time(up{job="inference"}[5m])',
                           'bentoml_service_request_duration_seconds_count{endpoint="/predict"}')  # fmt: skip
                seen = {q: requests.get(prom + "/api/v1/query", params={"query": q}, timeout=10).json()["data"]
                        for q in queries}  # fmt: skip
                raise ValueError(f"no latency point yet; Prometheus has {seen}")  # poll's last error if it never comes

            sender = threading.Thread(target=traffic, daemon=True)
            sender.start()
            try:
                poll("a latency point in Prometheus", latency_point, 300)
            finally:
                stop.set()
                sender.join(timeout=60)
            assert statuses and set(statuses) == {200}, statuses[:20]

            page.goto(web.url + "/operator")  # type: ignore[attr-defined]
            page.fill("#token", TOKEN)  # type: ignore[attr-defined]
            page.click("#operator-login button[type=submit]")  # type: ignore[attr-defined]
            page.wait_for_selector("#operator-login, [data-panel=quality]")  # type: ignore[attr-defined]
            assert page.url == web.url + "/operator"  # type: ignore[attr-defined]

            def count(selector: str) -> int:
                return len(page.query_selector_all(selector))  # type: ignore[attr-defined]

            def complete() -> bool:
                """Every panel has its data; else reload: under CI load a source may miss its panel's deadline."""
                said = [m.inner_text() for m in page.query_selector_all(".op-message")]  # type: ignore[attr-defined]
                if said:
                    page.reload()  # type: ignore[attr-defined]
                    raise ValueError(f"panels say {said}")  # poll's last error, if it never completes
                return True

            poll("every panel of the operator page", complete)

            # Production v1 and shadow v2 in each quality plot; p50 and p99; offline and online AUC per version;
            # candidate and production AUC per decision.
            plotted = ("auc-per-day", "ece-per-day", "reliability", "latency", "model-auc", "promotions")
            assert {p: count(f"svg[data-plot={p}] g.series") for p in plotted} == dict.fromkeys(plotted, 2)
            assert count("svg[data-plot=auc-per-day] circle") == 8  # a point per answered day and series
            assert count("svg[data-plot=answers-per-day] rect.plot-bar") == 5  # 4 days with answers, 1 without
            assert count("svg[data-plot=drift] rect.plot-bar") == 2
            shot(page, tmp_path, "operator")
        finally:
            prometheus.main(["down"])


def poll(what: str, check: Callable[[], bool], deadline_s: float = 120) -> None:
    """``check()`` until true; connection errors, timeouts and bad answers count as not yet (CI load)."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # requests' errors are OSErrors
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s; last error: {last!r}")
