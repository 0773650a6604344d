"""Waiting on local servers (Airflow's api-server, the client, BentoML) from a test on a busy machine.

Under load (CI runs the main suite on two xdist workers beside the Docker suite, on two cores) a local server
can take longer than any single request's timeout to answer, or refuse a connection while it restarts a
worker. That is slowness, not a failure: every wait here treats a connection error or a read timeout as
"not yet" and only gives up at its own deadline, which callers set generously. Deadlines are never asserted
on; a timeout fails with what was last seen and the servers' log tails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")
# Transient on a local server: refused/reset connections and read or connect timeouts.
TRANSIENT = (requests.ConnectionError, requests.Timeout)
# One attempt's read timeout: long enough for a starved server, short enough to retry a dropped request.
ATTEMPT_TIMEOUT = 30.0


def tails(*logs: Path, chars: int = 2500) -> str:
    return "\n".join(f"--- {f}\n{f.read_text(errors='replace')[-chars:]}" for f in logs if f.is_file())


def wait_for(what: str, check: Callable[[], T | None], timeout: float, logs: Sequence[Path] = (),
             interval: float = 1.0) -> T:  # fmt: skip
    """``check()`` until it returns something truthy (returned); a transient HTTP error counts as not yet."""
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while True:
        try:
            if result := check():
                return result
            last = f"not yet ({result!r})"
        except TRANSIENT as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}\n{tails(*logs)}")
        time.sleep(interval)


def request(session: requests.Session | None, method: str, url: str, timeout: float = 180,
            logs: Sequence[Path] = (), **kwargs: Any) -> requests.Response:  # fmt: skip
    """One request, repeated on transient errors until ``timeout``: for requests that are safe to repeat
    (reads, a token, a POST whose repeat the server refuses, e.g. a run with a fixed id). Any HTTP answer,
    error statuses included, is returned for the caller to check."""
    send = session.request if session is not None else requests.request
    # A Response is falsy for 4xx/5xx: wrap it, so only a transient error means "try again".
    return wait_for(f"{method} {url}", lambda: [send(method, url, timeout=ATTEMPT_TIMEOUT, **kwargs)], timeout, logs,
                    interval=1.0)[0]  # fmt: skip


def dag_run(api: requests.Session, url: str, dag_id: str, run_id: str, timeout: float,
            logs: Sequence[Path] = ()) -> str:  # fmt: skip
    """Trigger ``dag_id`` through the api-server's REST API (``url``; ``api`` holds the token), as the UI does, once
    the dag-processor has parsed its file, and wait up to ``timeout`` s for the run to end; returns its final state,
    "success" or "failed". A fixed ``run_id`` makes the trigger safe to repeat: when an answer is lost under load,
    the repeat gets 409. (An ``airflow`` CLI process per poll instead costs 4-5 CPU-s of imports each.)"""
    dag_url = f"{url}/api/v2/dags/{dag_id}"
    parsed = lambda: api.get(dag_url, timeout=ATTEMPT_TIMEOUT).status_code == 200  # noqa: E731  # 404 until parsed
    wait_for(f"{dag_id} to be parsed", parsed, 240, logs, interval=2.0)
    run = request(api, "POST", f"{dag_url}/dagRuns", json={"dag_run_id": run_id, "logical_date": None}, logs=logs)
    assert run.status_code in (200, 409), run.text[:1000]

    def finished() -> str | None:
        state = api.get(f"{dag_url}/dagRuns/{run_id}", timeout=ATTEMPT_TIMEOUT).json()["state"]
        return state if state in ("success", "failed") else None

    return wait_for(f"the {dag_id} run {run_id}", finished, timeout, logs, interval=2.0)
