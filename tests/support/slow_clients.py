"""Slow clients against an HTTP server, for the service's hardening test and bench/slow_clients.py.

``hold`` opens ``n`` raw connections that send a request's headers and part of its body and then stall (half
declare a Content-Length and send fewer bytes, half send a chunked body without its last chunk) plus one that
stops in the middle of its headers; while they are open it times ``/readyz`` and ``/predict``; then it waits
for what the server answers each of them.
"""

from __future__ import annotations

import collections
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

ITEM = {"assessmentItemID": "A060001001", "testId": "A060000001", "KnowledgeTag": 7224}
HEAD = "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
SHORT = (HEAD + "Content-Length: 200\r\n\r\n").encode() + b'{"candidates": ['  # fewer bytes than declared
CHUNKED = (HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode() + b'10\r\n{"candidates": [\r\n'  # no last chunk
HALF_HEADERS = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-"


@dataclass
class Held:
    n: int
    held_for: float = 0.0  # seconds from opening the first slow connection to the last probe's answer
    cut_after: float = 0.0  # seconds from opening them until the server had answered or closed every one
    probes: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {"/readyz": [], "/predict": []})
    statuses: collections.Counter = field(default_factory=collections.Counter)  # of the slow bodies' replies
    first_reply: bytes = b""
    header_reply: bytes | None = None  # what the half-sent-headers connection got (b"": closed without a word)

    def summary(self) -> str:
        lat = ""
        for path, v in self.probes.items():
            seconds = sorted(s for _, s in v)
            lat += f" {path} {len(v)}x, status {sorted({c for c, _ in v})}, median {1e3 * seconds[len(v) // 2]:.0f} ms"
            lat += f", max {1e3 * seconds[-1]:.0f} ms;"
        header = {None: "still open", b"": "closed"}.get(self.header_reply, f"answered {status_of(self.header_reply)}")
        return (
            f"{self.n} slow-body connections held {self.held_for:.1f} s, answered {dict(self.statuses)} after"
            f" {self.cut_after:.1f} s; half-sent headers: {header}; meanwhile{lat}"
        )


def connect(url: str, data: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    sock.sendall(data)
    return sock


def reply(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sends until it closes the connection; None if it is still open at ``deadline``."""
    got = b""
    with sock:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk


def status_of(response: bytes | None) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response or b"")
    return int(match.group(1)) if match else None


def hold(url: str, n: int, rounds: int, wait_s: float) -> Held:
    """``n`` slow bodies and one half-sent header block against ``url``; ``rounds`` probes of each path while
    they are open; then up to ``wait_s`` for the server to answer or close them all."""
    result = Held(n)
    opened = time.monotonic()
    slow = [connect(url, CHUNKED if i % 2 else SHORT) for i in range(n)]
    half = connect(url, HALF_HEADERS)
    time.sleep(1)  # the server takes in 300 connections at once: probe once they are open, not while they open
    with requests.Session() as session:
        for _ in range(rounds):
            for path in result.probes:
                start = time.perf_counter()
                if path == "/predict":
                    r = session.post(url + path, json={"candidates": [ITEM]}, timeout=60)
                else:
                    r = session.get(url + path, timeout=60)
                result.probes[path].append((r.status_code, time.perf_counter() - start))
    result.held_for = time.monotonic() - opened
    deadline = opened + wait_s
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda s: reply(s, deadline), [*slow, half]))
    result.cut_after = time.monotonic() - opened
    result.statuses.update(status_of(r) if r is not None else "still open" for r in replies[:n])
    result.first_reply, result.header_reply = replies[0] or b"", replies[n]
    return result
