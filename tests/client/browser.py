"""What the browser tests share: Chromium's path and flags, the client's environment, and the steps a student takes.

The fixtures (`browser`, one Chromium per module; `browser_page`, a fresh context per test) are in conftest.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.serving.servers import free_port
from tests.support.students import password_of

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
