"""Calls to the DKT inference service, bounded in time: the page never hangs on a slow or stopped service.

The base URL is ``DKT_INFERENCE_URL``, unless ``DKT_INFERENCE_URL_FILE`` names a
file that exists: its stripped content wins and is re-read whenever the file's
mtime changes. The pipeline switches models by writing that file and then
stopping the old server; retries with backoff re-read the file between
attempts, so a request in flight during the switch lands on the new server.

Time: ``timeout_s`` bounds each connect and each read, but a server that drips its reply a byte at a time
never trips a per-read timeout. So every call also has a total deadline (``deadline_s``, covering its
retries, backoff, headers and body): a watchdog shuts the call's socket down when it passes. Inside
``with client.budget():`` all calls share one deadline: the page's whole conversation with the service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

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


class _Watch:
    """The connection a call is using, so that the deadline's timer (another thread) can cut it."""

    def __init__(self) -> None:
        self.conn: HTTPConnection | None = None
        self.fired = False

    def cut(self) -> None:
        self.fired = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the blocked recv returns at once; the connection is dropped


_calling = threading.local()  # the _Watch of the call this thread is making


class _WatchedMixin:
    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = getattr(_calling, "watch", None)
        if watch is not None:
            watch.conn = self  # type: ignore[assignment]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections register with the calling thread's _Watch."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class InferenceClient:
    def __init__(
        self,
        base_url: BaseURL,
        timeout_s: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        deadline_s: float = 5.0,
    ):
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            session.mount("http://", _WatchedAdapter())
            session.mount("https://", _WatchedAdapter())
            self._local.session = session
        return self._local.session  # type: ignore[no-any-return]

    def _drop_session(self) -> None:
        """Forget pooled connections: to a server that may be gone, or one whose socket a deadline cut."""
        session = self._local.__dict__.pop("session", None)
        if session is not None:
            session.close()

    @contextlib.contextmanager
    def budget(self) -> Iterator[None]:
        """Every call of this thread inside the block shares one deadline, ``deadline_s`` from now (nested
        blocks keep the outer one)."""
        if getattr(self._local, "deadline", None) is not None:
            yield
            return
        self._local.deadline = time.monotonic() + self.deadline_s
        try:
            yield
        finally:
            self._local.deadline = None

    def post(self, path: str, body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
        """POST JSON; retries connection errors and 5xx with exponential backoff; 4xx fail at once.

        ``request_id`` goes out as the ``X-Request-ID`` header (the service echoes it), so the prediction
        log and the service's side of a call can be matched."""
        return self._call("POST", path, body, request_id, self.retries)

    def get(self, path: str) -> dict[str, Any]:
        """GET JSON, one attempt: for information the page can do without (e.g. /metadata)."""
        return self._call("GET", path, None, None, 1)

    def _send(
        self, method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str] | None, left: float
    ) -> tuple[int, bytes]:
        """One attempt, cut when ``left`` seconds have passed whatever the server does."""
        watch = _Watch()
        timer = threading.Timer(left, watch.cut)
        timer.daemon = True
        _calling.watch = watch
        timer.start()
        try:
            per_read = min(self.timeout_s, left)
            r = self._session().request(
                method, url, json=body, headers=headers, timeout=(min(1.0, per_read), per_read), stream=True
            )
            content = r.content  # the whole body, under the watch
        except requests.RequestException:
            if watch.fired:
                raise TimeoutError(f"no complete answer within the {self.deadline_s:g}s deadline") from None
            raise
        finally:
            timer.cancel()
            _calling.watch = None
        if watch.fired:  # cut at the very end: a body that looks complete may be truncated
            self._drop_session()
            raise TimeoutError(f"no complete answer within the {self.deadline_s:g}s deadline")
        return r.status_code, content

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, request_id: str | None, retries: int
    ) -> dict[str, Any]:
        headers = {"X-Request-ID": request_id} if request_id else None
        deadline = getattr(self._local, "deadline", None) or time.monotonic() + self.deadline_s
        last = f"{path}: no time left within the {self.deadline_s:g}s deadline"
        for attempt in range(retries):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            url = self.base_url.get() + path  # re-read each attempt: a model switch may have moved the service
            try:
                status, content = self._send(method, url, body, headers, left)
            except (requests.RequestException, TimeoutError) as e:
                last = f"{url}: {type(e).__name__}"
                self._drop_session()
                if isinstance(e, TimeoutError):
                    last = f"{url}: {e}"
                    break
            else:
                if status == 200:
                    try:
                        return json.loads(content)  # type: ignore[no-any-return]
                    except ValueError:
                        last = f"{url}: the answer is not JSON"
                else:
                    last = f"{url}: HTTP {status} {content[:200].decode(errors='replace')}"
                    if 400 <= status < 500:
                        break  # our request is wrong: retrying will not help
            if attempt + 1 < retries:
                time.sleep(max(0.0, min(self.backoff_s * 2**attempt, deadline - time.monotonic())))
        log.warning("inference unavailable: %s", last)
        raise InferenceUnavailable(last)
