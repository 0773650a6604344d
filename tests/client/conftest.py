from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import HTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
from flask import Flask

from client import create_app
from tests.client.browser import CHROMIUM, CHROMIUM_ARGS
from tests.serving.servers import free_port


@pytest.fixture
def dead_url() -> str:
    """An address where nothing listens: the inference service is down."""
    return f"http://127.0.0.1:{free_port()}"


def make_app(tmp_path: Path, sim_dir: Path, url: str, **extra: object) -> Flask:
    return create_app(
        {
            "DKT_CLIENT_DB": str(tmp_path / "client.db"),
            "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
            "DKT_INFERENCE_URL": url,
            "DKT_INFERENCE_URL_FILE": "",
            "DKT_INFERENCE_TIMEOUT_S": 0.5,
            "DKT_INFERENCE_RETRIES": 2,
            "SECRET_KEY": "test-secret",
            **extra,
        }
    )


S = TypeVar("S", bound=HTTPServer)


@contextmanager
def serving(server: S) -> Iterator[S]:
    """A real HTTP server of the test's own (a stand-in for the inference service) on a thread, shut on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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
