"""A teacher's pages end to end: gunicorn + the session's live `bentoml serve` + headless Chromium.

Two students answer through the real client over HTTP (their predictions logged by it); the teacher signs in in the
browser, sees the grid, sorts it, opens one student, the at-risk list, the question report and time on task, and
downloads the question report as CSV. axe-core checks every view (and the sign-in page); at phone width (390 px) the
page must not scroll sideways, and a screenshot shows it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import requests

from client import accounts, db
from tests.client import a11y
from tests.client.browser import client_env, shot
from tests.serving.servers import Server, gunicorn_client
from tests.support.students import CSRF, Tally, answer_key, answer_once, sign_up_form

pytestmark = pytest.mark.slow

TEACHER, PASSWORD = "ms noether", "teacher-password-1"
STUDENTS = {"ada": 0.9, "bob": 0.3}  # name -> chance of a right answer
ANSWERS_EACH = 6


def test_teacher_sees_the_grid_drills_down_and_downloads_a_csv(
    service: Server, sim_dir: Path, tmp_path: Path, browser_page: object
) -> None:
    page = browser_page
    url_file = tmp_path / "inference_url"
    url_file.write_text(service.url)
    env = client_env(tmp_path, sim_dir, url_file)
    with db.connect(env["DKT_CLIENT_DB"]) as conn:  # as `dkt client create-user --role teacher` and /classes do
        db.init(conn)
        code = accounts.create_class(conn, accounts.create_account(conn, TEACHER, PASSWORD, "teacher"), "5B maths")
    with gunicorn_client(env, tmp_path / "gunicorn.log") as web:
        key, rng, tally = answer_key(sim_dir / "questions.csv"), np.random.default_rng(3), Tally()
        for name, skill in STUDENTS.items():
            s = requests.Session()
            csrf = CSRF.search(s.get(web.url + "/", timeout=30).text)
            assert csrf
            r = s.post(
                web.url + "/register", data={**sign_up_form(csrf.group(1), name), "class_code": code}, timeout=30
            )
            assert r.status_code == 200, r.text[:300]
            for _ in range(ANSWERS_EACH):
                answer_once(s, web.url, key, rng, skill, tally)
        assert tally.answers == len(STUDENTS) * ANSWERS_EACH and not tally.failed, tally.errors

        page.goto(web.url + "/")  # type: ignore[attr-defined]
        a11y.check(page, "the sign-in page")
        page.fill("#username", TEACHER)  # type: ignore[attr-defined]
        page.fill("#password", PASSWORD)  # type: ignore[attr-defined]
        page.click("#signin-form button[type=submit]")  # type: ignore[attr-defined]
        page.goto(web.url + "/teach")  # type: ignore[attr-defined]
        page.click("#teach-classes a")  # type: ignore[attr-defined]
        page.wait_for_selector("#grid")  # type: ignore[attr-defined]
        assert not page.is_visible("#service-down")  # type: ignore[attr-defined]

        def students() -> list[str]:
            rows = page.query_selector_all("#grid tbody tr")  # type: ignore[attr-defined]
            return [r.get_attribute("data-student") for r in rows]

        assert students() == ["ada", "bob"]  # by name
        levels = [c.get_attribute("data-level") for c in page.query_selector_all("#grid td.lvl")]  # type: ignore[attr-defined]
        assert len(levels) == 2 * 16 and "not started" in levels and set(levels) - {"not started"}
        a11y.check(page, "the skills grid")
        shot(page, tmp_path, "teacher-grid")
        page.click("a[data-sort=name]")  # type: ignore[attr-defined]
        page.wait_for_selector("th[aria-sort=descending] a[data-sort=name]")  # type: ignore[attr-defined]
        assert students() == ["bob", "ada"]

        page.click("#grid a.student-link >> text=ada")  # type: ignore[attr-defined]
        page.wait_for_selector("svg[data-plot=mastery-over-time]")  # type: ignore[attr-defined]
        assert page.inner_text("#student-name") == "ada"  # type: ignore[attr-defined]
        assert page.query_selector_all("svg[data-plot=mastery-over-time] g.series")  # type: ignore[attr-defined]
        a11y.check(page, "a student's mastery over time")
        shot(page, tmp_path, "teacher-student")

        for tab, table in (("at-risk", "#at-risk, #nobody-at-risk"), ("time", "#time")):
            page.click(f"#tab-{tab}")  # type: ignore[attr-defined]
            page.wait_for_selector(table)  # type: ignore[attr-defined]
            a11y.check(page, f"the {tab} view")
        page.click("#tab-items")  # type: ignore[attr-defined]
        page.wait_for_selector("#items")  # type: ignore[attr-defined]
        shown = len(page.query_selector_all("#items tbody tr"))  # type: ignore[attr-defined]
        a11y.check(page, "the question report")
        shot(page, tmp_path, "teacher-items")
        with page.expect_download() as download:  # type: ignore[attr-defined]
            page.click("#items-csv")  # type: ignore[attr-defined]
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert len(rows) == shown and sum(int(r["answers"]) for r in rows) == tally.answers
        # The client logged a prediction for each answer: the report compares them with what happened.
        assert sum(int(r["answers_with_prediction"]) for r in rows) == tally.answers
        assert all(0 <= float(r["predicted_correct_pct"]) <= 100 for r in rows)

        page.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
        page.click("#tab-grid")  # type: ignore[attr-defined]
        page.wait_for_selector("#grid")  # type: ignore[attr-defined]
        # Readable on a phone: the page itself does not scroll sideways; the wide grid scrolls in its own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # type: ignore[attr-defined]
        shot(page, tmp_path, "teacher-grid-phone")
