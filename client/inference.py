"""Calls to the DKT inference service, bounded in time: the page never hangs on a slow or stopped service.

The base URL is ``DKT_INFERENCE_URL``, unless ``DKT_INFERENCE_URL_FILE`` names a
file that exists: its stripped content wins and is re-read whenever the file's
mtime changes. The pipeline switches models by writing that file and then
stopping the old server; retries with backoff re-read the file between
attempts, so a request in flight during the switch lands on the new server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import requests

log = logging.getLogger(__name__)


class InferenceUnavailable(RuntimeError):
    """The service did not answer usefully within the time budget."""


class BaseURL:
    def __init__(self, default: str, url_file: str = ""):
        self.default = default.rstrip("/")
        self.url_file = url_file
        self._cached: tuple[float, str] | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        if not self.url_file:
            return self.default
        try:
            mtime = os.stat(self.url_file).st_mtime
        except OSError:
            return self.default
        with self._lock:
            if self._cached is None or self._cached[0] != mtime:
                try:
                    with open(self.url_file) as f:
                        text = f.read().strip()
                except OSError:
                    return self.default
                self._cached = (mtime, text.rstrip("/") or self.default)
            return self._cached[1]


class InferenceClient:
    def __init__(self, base_url: BaseURL, timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.2):
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session  # type: ignore[no-any-return]

    def post(self, path: str, body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
        """POST JSON; retries connection errors and 5xx with exponential backoff; 4xx fail at once.

        ``request_id`` goes out as the ``X-Request-ID`` header (the service echoes it), so the prediction
        log and the service's side of a call can be matched."""
        return self._call("POST", path, body, request_id, self.retries)

    def get(self, path: str) -> dict[str, Any]:
        """GET JSON, one attempt: for information the page can do without (e.g. /metadata)."""
        return self._call("GET", path, None, None, 1)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, request_id: str | None, retries: int
    ) -> dict[str, Any]:
        headers = {"X-Request-ID": request_id} if request_id else None
        last = ""
        for attempt in range(retries):
            url = self.base_url.get() + path  # re-read each attempt: a model switch may have moved the service
            try:
                r = self._session().request(
                    method, url, json=body, headers=headers, timeout=(min(1.0, self.timeout_s), self.timeout_s)
                )
            except requests.RequestException as e:
                last = f"{url}: {type(e).__name__}"
                self._local.__dict__.pop("session", None)  # drop pooled connections to a server that may be gone
            else:
                if r.status_code == 200:
                    return r.json()  # type: ignore[no-any-return]
                last = f"{url}: HTTP {r.status_code} {r.text[:200]}"
                if 400 <= r.status_code < 500:
                    break  # our request is wrong: retrying will not help
            if attempt + 1 < retries:
                time.sleep(self.backoff_s * 2**attempt)
        log.warning("inference unavailable: %s", last)
        raise InferenceUnavailable(last)
