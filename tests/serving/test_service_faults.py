"""The inference service's worker killed with SIGKILL under a student's feet: BentoML starts a new one, the client's
page degrades meanwhile (the answer stored once), and predictions come back on their own.

On the session's live `bentoml serve` (no server of its own); the test ends only when the new worker answers, so
the tests after it find the service as it was. docs/hardening.md has the whole fault table.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import requests

from tests.client.conftest import make_app
from tests.client.test_answer_once import form, rows, signed_in
from tests.pipeline.test_crash_data import children
from tests.serving.servers import Server

UNAVAILABLE = "Predictions are unavailable right now"


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` and its command line."""
    out, todo = {}, [pid]
    while todo:
        for child in children(todo.pop()):
            try:
                out[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # ended meanwhile
                continue
            todo.append(child)
    return out


def service_workers(server: Server) -> list[int]:
    # BentoML 1.4: the `bentoml serve` process is the circus arbiter holding the socket; each worker is a
    # `python -m _bentoml_impl.worker.service` child serving the API and the model.
    return [pid for pid, cmd in descendants(server.proc.pid).items() if "_bentoml_impl.worker" in cmd]


def until(what: str, check: object, deadline_s: float = 180) -> None:
    """Poll ``check`` (a callable) until it is true; transient errors of a server starting are retried."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except requests.RequestException as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s (last error: {last!r})")


def test_service_worker_killed_is_restarted_and_the_page_degrades_then_recovers(
    service: Server, sim_dir: Path, tmp_path: Path
) -> None:
    # A page deadline shorter than a worker's start (imports and the model: seconds even on a quiet host), so the
    # page meets the dead worker, not its replacement.
    app = make_app(tmp_path, sim_dir, service.url, DKT_INFERENCE_DEADLINE_S=2.0, DKT_INFERENCE_RETRIES=1)
    c = signed_in(app, tmp_path, "worker-fault")
    pages: list[str] = []

    def page_with_predictions() -> bool:
        pages.append(c.get("/practice").get_data(as_text=True))
        return UNAVAILABLE not in pages[-1]

    until("predictions before the kill", page_with_predictions)
    before = service_workers(service)
    assert len(before) == 1, descendants(service.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    t0 = time.monotonic()

    sent = form(pages[-1], "3")
    assert c.post("/answer", data=sent).status_code == 302  # stored while the worker is dead
    degraded = c.get("/practice").get_data(as_text=True)
    assert UNAVAILABLE in degraded, "the page did not degrade: the worker answered within the deadline"
    assert c.post("/answer", data=sent, follow_redirects=True).status_code == 200  # the browser retries the form
    assert len(rows(tmp_path)) == 1  # the answer, once

    until("predictions again after the worker's restart", page_with_predictions)
    recovered_s = time.monotonic() - t0
    after = service_workers(service)
    assert len(after) == 1 and after != before, (before, after)
    assert requests.get(service.url + "/readyz", timeout=30).status_code == 200

    assert c.post("/answer", data=form(pages[-1], "3")).status_code == 302  # answering goes on, with predictions
    assert UNAVAILABLE not in c.get("/practice").get_data(as_text=True)
    answered = rows(tmp_path)
    assert len(answered) == 2 and len({r[0] for r in answered}) == 2, answered  # two items, each once
    print(f"\n[faults] bentoml worker {before[0]} killed: page degraded, new worker {after[0]}, "
          f"predictions back after {recovered_s:.1f} s; answers stored {len(answered)}, each once")  # fmt: skip
