"""A student's session in a real browser: gunicorn + the session's live `bentoml serve` + headless Chromium.

Sign-up, the diagnostic, a one-skill practice session, a refused answer, a reload, the End button's summary,
the progress plot, and the page at phone width; axe-core (tests/client/a11y.py) checks each page.
Screenshots: DKT_SCREENSHOT_DIR=docs/img keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client import a11y
from tests.client.browser import client_env, shot, sign_up, solve, submit
from tests.serving.servers import Server, gunicorn_client

pytestmark = pytest.mark.slow

DIAGNOSTIC = 5


def test_a_students_session_from_sign_up_to_summary(
    service: Server, sim_dir: Path, tmp_path: Path, browser_page: object
) -> None:
    page = browser_page
    url_file = tmp_path / "inference_url"
    url_file.write_text(service.url)
    env = {**client_env(tmp_path, sim_dir, url_file), "DKT_DIAGNOSTIC_ITEMS": str(DIAGNOSTIC)}
    with gunicorn_client(env, tmp_path / "gunicorn.log") as web:
        sign_up(page, web.url, "lin")
        page.wait_for_selector("#session")  # type: ignore[attr-defined]
        assert f"Question 1 of {DIAGNOSTIC}" in page.inner_text("#session")  # type: ignore[attr-defined]
        shot(page, tmp_path, "student-diagnostic")
        a11y.check(page, "the diagnostic")
        skills = []
        for i in range(DIAGNOSTIC):  # the diagnostic: one question from each of five different skills
            skills.append(page.inner_text("#question-skill"))  # type: ignore[attr-defined]
            question = page.inner_text("#question-text")  # type: ignore[attr-defined]
            submit(page, solve(question) if i % 2 == 0 else "-1")
        assert len(set(skills)) == DIAGNOSTIC, skills
        assert "Diagnostic done" in page.inner_text("#session-summary")  # type: ignore[attr-defined]
        shot(page, tmp_path, "student-diagnostic-summary")

        skill = page.inner_text("#session-skill")  # type: ignore[attr-defined]
        assert "Why this skill:" in page.inner_text("#session-reason")  # type: ignore[attr-defined]
        question = page.inner_text("#question-text")  # type: ignore[attr-defined]
        submit(page, "abc")  # refused, not recorded: the same question, the same count
        assert "is not a number" in page.inner_text(".flash.error")  # type: ignore[attr-defined]
        assert page.inner_text("#question-text") == question  # type: ignore[attr-defined]
        assert f"3/{DIAGNOSTIC} correct" in page.inner_text("header")  # type: ignore[attr-defined]
        shot(page, tmp_path, "student-refused")
        a11y.check(page, "a refused answer under a session summary")
        page.reload()  # type: ignore[attr-defined]
        assert page.inner_text("#question-text") == question  # type: ignore[attr-defined]

        submit(page, solve(question))
        moved = page.inner_text(".flash.move")  # type: ignore[attr-defined]
        assert moved.startswith(skill + ":") and "→" in moved, moved
        assert page.inner_text("#question-skill") == skill  # type: ignore[attr-defined]  # the session stays in its skill
        shot(page, tmp_path, "student-practice")

        page.click("#end-session")  # type: ignore[attr-defined]
        page.wait_for_selector("#continue")  # type: ignore[attr-defined]
        summary = page.inner_text("#session-summary")  # type: ignore[attr-defined]
        assert f"Session summary: {skill}" in summary and "you ended it" in summary
        assert "/100" in page.inner_text("#summary-scores")  # type: ignore[attr-defined]
        assert "Next: practise" in summary
        shot(page, tmp_path, "student-summary")
        a11y.check(page, "the session summary")

        page.goto(web.url + "/progress")  # type: ignore[attr-defined]
        assert len(page.query_selector_all("#mastery-plot polyline")) == DIAGNOSTIC  # type: ignore[attr-defined]
        shot(page, tmp_path, "student-progress")
        a11y.check(page, "the progress page")

        page.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]  # a phone
        page.goto(web.url + "/practice")  # type: ignore[attr-defined]
        page.wait_for_selector("#answer-form")  # type: ignore[attr-defined]
        width = page.evaluate("document.documentElement.scrollWidth")  # type: ignore[attr-defined]
        assert width <= 390, f"the page is {width} px wide at phone width"
        shot(page, tmp_path, "student-phone")
        a11y.check(page, "practice at phone width")
