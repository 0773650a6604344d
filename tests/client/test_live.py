"""The student page end to end: gunicorn + the live `bentoml serve` + headless Chromium driven by Playwright."""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.servers import Server, bentoml_env, bentoml_service, free_port, gunicorn_client, together
from tests.support.students import password_of

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DKT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module (a launch is seconds of CPU); each test gets its own context."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed (make test-setup installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_page(browser: object) -> Iterator[object]:
    # A new context is a fresh profile: no cookies, storage or cache from another test.
    context = browser.new_context(viewport={"width": 1200, "height": 860})  # type: ignore[attr-defined]
    try:
        yield context.new_page()
    finally:
        context.close()


def client_env(tmp_path: Path, sim_dir: Path, url_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DKT_CLIENT_DB": str(tmp_path / "client.db"),
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "DKT_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",  # overridden by the URL file
        "DKT_INFERENCE_URL_FILE": str(url_file),
        "DKT_INFERENCE_TIMEOUT_S": "5",
        "DKT_INFERENCE_RETRIES": "3",
        "DKT_SECRET_KEY": "live-test-secret",
    }


def solve(question: str) -> str:
    a, op, b = question.replace(" = ?", "").split()
    x, y = int(a), int(b)
    return str({"+": x + y, "-": x - y, "×": x * y, "÷": x // y if y else 0}[op])


def chart(page: object) -> dict[str, float]:
    rows = page.query_selector_all("#knowledge-chart li")  # type: ignore[attr-defined]
    return {r.get_attribute("data-tag"): float(r.get_attribute("data-mastery")) for r in rows}


def sign_up(page: object, base: str, username: str) -> None:
    """Create a student account through the sign-in page's link and the registration form, as a student does."""
    page.goto(base + "/")  # type: ignore[attr-defined]
    page.click("#register-link")  # type: ignore[attr-defined]
    page.fill("#username", username)  # type: ignore[attr-defined]
    page.fill("#password", password_of(username))  # type: ignore[attr-defined]
    page.click("#register-form button[type=submit]")  # type: ignore[attr-defined]


def submit(page: object, text: str) -> None:
    page.fill("#answer", text)  # type: ignore[attr-defined]
    page.click("#answer-form button")  # type: ignore[attr-defined]
    page.wait_for_selector(".flash")  # type: ignore[attr-defined]


def shot(page: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    if out := os.environ.get("DKT_SCREENSHOT_DIR"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


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
        shot(page, tmp_path, "practice")


def test_service_stopped_then_switched(
    packed: object, service: Server, sim_dir: Path, tmp_path: Path, browser_page: object
) -> None:
    """A student keeps practising while the service is stopped; after a URL-file switch predictions return."""
    page = browser_page
    url_file = tmp_path / "inference_url"
    env = bentoml_env(packed.home, packed.model_tag)  # type: ignore[attr-defined]
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
